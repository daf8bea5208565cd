// The CUDA backend's causal attention (standard and runway-rewired) and RoPE: the
// kernels and the CudaBackend methods that launch them, behind the ops attention,
// rewired_attention, qkv_attention and rope. The ops and the plain CPU
// reference: engine/ops/attention.cpp; the tuned CPU kernels:
// engine/ops/attention_cpu_fast.cpp; the math with the same names: docs/attention.md.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/cuda_backend.h"
#include "engine/fused_kernel.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"

namespace runway {
namespace cuda_kernels {

// ============================================================================
// Attention and RoPE kernels. Shapes: q, k, v, y (B, H, T, D); logits and attention
// (B, H, T, T); runway P and R (B, T, T). Names follow engine/ops/attention.h.
// ============================================================================

// s: logits (B, heads, T, T), of which heads [head0, head0 + nh) are read;
// out: (B, nh, T, T). Row (b, hh, i), h = head0 + hh, over j <= i:
//   z_j = s[b, h, i, j] - slope_h * (i - j) - beta * R[b, i, j]
// (the slope term only with slopes (heads doubles) given, the R term only with R given);
// out[b, hh, i, j] = softmax_j(z) for j <= i and 0 for j > i. One block per row.
// out may alias s (nh == heads, head0 == 0).
template <typename T>
__global__ void causal_softmax_kernel(const T* s, T* out, int64_t batch, int64_t heads,
                                      int64_t nh, int64_t head0, int64_t seq,
                                      const double* slopes, const T* R, T beta) {
  __shared__ T buf[kThreads];
  const int64_t rows = batch * nh * seq;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = row % seq;
    const int64_t hh = (row / seq) % nh;
    const int64_t b = row / (seq * nh);
    const int64_t h = head0 + hh;
    const T* sr = s + ((b * heads + h) * seq + i) * seq;
    T* outr = out + row * seq;
    const T* rr = R != nullptr ? R + (b * seq + i) * seq : nullptr;
    const double slope = slopes != nullptr ? slopes[h] : 0.0;
    auto logit = [&](int64_t j) {
      T z = sr[j];
      if (slope != 0.0) z -= static_cast<T>(slope * static_cast<double>(i - j));
      if (rr != nullptr) z -= beta * rr[j];
      return z;
    };
    T mx = neg_infinity<T>();
    for (int64_t j = threadIdx.x; j <= i; j += kThreads) mx = MaxOp()(mx, logit(j));
    mx = block_reduce(mx, buf, MaxOp());
    T total = T(0);
    for (int64_t j = threadIdx.x; j <= i; j += kThreads) total += dev_exp(logit(j) - mx);
    total = block_reduce(total, buf, SumOp());
    const T inv = T(1) / total;
    for (int64_t j = threadIdx.x; j < seq; j += kThreads) {
      outr[j] = j <= i ? dev_exp(logit(j) - mx) * inv : T(0);
    }
  }
}

// Softmax backward restricted to j <= i. a, da: `rows` rows of length seq (row r is
// position i = r % seq of group g = r / seq); output row r is at
// out + g * out_group_stride + i * seq. For j <= i:
//   v_j = a[j] * (da[j] - sum_{j' <= i} a[j'] da[j'])
// out[j] = v_j (or += v_j with accumulate); for j > i, out[j] = 0 (left as is with
// accumulate). One block per row. out may alias da when not accumulating.
template <typename T>
__global__ void causal_softmax_backward_kernel(const T* a, const T* da, T* out, int64_t rows,
                                               int64_t seq, int64_t out_group_stride,
                                               bool accumulate) {
  __shared__ T buf[kThreads];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = row % seq;
    const T* ar = a + row * seq;
    const T* gr = da + row * seq;
    T* outr = out + (row / seq) * out_group_stride + i * seq;
    T dot = T(0);
    for (int64_t j = threadIdx.x; j <= i; j += kThreads) dot += ar[j] * gr[j];
    dot = block_reduce(dot, buf, SumOp());
    for (int64_t j = threadIdx.x; j < seq; j += kThreads) {
      if (j <= i) {
        const T v = ar[j] * (gr[j] - dot);
        outr[j] = accumulate ? outr[j] + v : v;
      } else if (!accumulate) {
        outr[j] = T(0);
      }
    }
  }
}

// p, r: (B, T, T). Absorption summary R[b, i, j] = sum_{j<k<i} P[b, k, j] (0 for j >= i):
// one thread per column (b, j) walks down the rows with a running sum, the spec's
// incremental-decoding state acc[j].
template <typename T>
__global__ void absorption_summary_kernel(const T* p, T* r, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t b = idx / seq;
    const int64_t j = idx % seq;
    const T* pb = p + b * seq * seq;
    T* rb = r + b * seq * seq;
    T acc = T(0);
    for (int64_t i = 0; i < seq; ++i) {
      if (j < i) {
        rb[i * seq + j] = acc;
        acc += pb[i * seq + j];
      } else {
        rb[i * seq + j] = T(0);
      }
    }
  }
}

// dr, dp: (B, T, T). Absorption backward dP[b, k, j] = sum_{i>k} dR[b, i, j] for j < k,
// 0 elsewhere: a reverse exclusive scan down each column, one thread per (b, j).
template <typename T>
__global__ void absorption_backward_kernel(const T* dr, T* dp, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t b = idx / seq;
    const int64_t j = idx % seq;
    const T* drb = dr + b * seq * seq;
    T* dpb = dp + b * seq * seq;
    T acc = T(0);
    for (int64_t k = seq - 1; k >= 0; --k) {
      dpb[k * seq + j] = j < k ? acc : T(0);
      acc += drb[k * seq + j];
    }
  }
}

// x, y: (B, T, T). y = L(x): x[b, i, j] where j < i, else 0. y may alias x.
template <typename T>
__global__ void strictly_lower_kernel(const T* x, T* y, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq * seq;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t j = idx % seq;
    const int64_t i = (idx / seq) % seq;
    y[idx] = j < i ? x[idx] : T(0);
  }
}

// ds: (B, H, T, T) = dS'; dr: (B, T, T). dR[b, i, j] = (sum_h dS'[b, h, i, j]) * neg_beta.
template <typename T>
__global__ void runway_dr_kernel(const T* ds, T* dr, int64_t batch, int64_t heads, int64_t seq,
                                 T neg_beta) {
  const int64_t tt = seq * seq;
  const int64_t n = batch * tt;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t b = idx / tt;
    const int64_t ij = idx % tt;
    T acc = T(0);
    for (int64_t h = 0; h < heads; ++h) acc += ds[(b * heads + h) * tt + ij];
    dr[idx] = acc * neg_beta;
  }
}

// x, y: (rows, seq, dim), dim even, half = dim / 2. For position t and c < half, with
// angle = (t + offset) * base^(-2c/dim) (computed in double) and s = +-sin(angle)
// (minus for the inverse):
//   y[c] = x[c] cos - x[c + half] s,   y[c + half] = x[c] s + x[c + half] cos.
// One thread per pair (c, c + half). y may alias x.
template <typename T>
__global__ void rope_kernel(const T* x, T* y, int64_t rows, int64_t seq, int64_t dim,
                            double base, int64_t offset, double sign) {
  const int64_t half = dim / 2;
  const int64_t n = rows * seq * half;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t c = idx % half;
    const int64_t rt = idx / half;  // (row, t) flattened
    const int64_t t = rt % seq;
    const double inv_freq =
        pow(base, -2.0 * static_cast<double>(c) / static_cast<double>(dim));
    const double angle = static_cast<double>(t + offset) * inv_freq;
    const T cs = static_cast<T>(cos(angle));
    const T sn = static_cast<T>(sign * sin(angle));
    const T* xr = x + rt * dim;
    T* yr = y + rt * dim;
    const T x1 = xr[c], x2 = xr[c + half];
    yr[c] = x1 * cs - x2 * sn;
    yr[c + half] = x1 * sn + x2 * cs;
  }
}

}  // namespace cuda_kernels

using namespace cuda_kernels;  // the kernels and the launch constants
using namespace cuda_host;     // cuda/cuda_common.cuh

// ============================================================================
// Attention and RoPE
// ============================================================================
//
// Forward (per (b, h), as batched cuBLAS calls over B*H):
//   S_h = scale * Q_h K_h^T                       gemm into the attn buffer
//   rewired: P = causal softmax of S_r (+ ALiBi)  -> p;  R from P -> r
//            absorption: column running sums;  two_hop: R = L(P) L(P) (gemm)
//   A'_h = causal softmax of S_h (+ ALiBi) - beta R, in place in attn
//   Y_h  = A'_h V_h                                gemm
// Backward:
//   dV = A'^T dY;  dA' = dY V^T;  dS' = A' * (dA' - rowsum(dA' A'))   (j <= i)
//   rewired, not detached, beta != 0:
//     dR = -beta sum_h dS'_h
//     absorption: dP[k,j] = sum_{i>k} dR[i,j] (j < k);  two_hop: dP = L(dR L(P)^T + L(P)^T dR)
//     dS_r += P * (dP - rowsum(dP P))
//   dQ = scale * dS K;  dK = scale * dS^T Q
//
// Memory: this materialises the (B, H, T, T) logits/attention in `attn` (saved for the
// backward, which also takes a (B, H, T, T) scratch for dS), i.e. O(B H T^2) floats
// each: 2 GiB at B=8, H=16, T=2048 in float32. It is what the maps' consumers read (a
// sink: inspection, the plots). The memory-linear kernels, which keep only per-row
// log-sum-exps and recompute tiles, are in cuda/ops/attention_blockwise.cu (chosen by
// AttentionOptions::impl; docs/attention.md section (g)).

template <typename T>
void CudaBackend::attention_forward_impl(const AttentionArgs& a, const T* q, const T* k,
                                         const T* v, T* y, T* attn, T* p, T* r) {
  const DType dt = dtype_of<T>::value;
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t tt = N * N;
  if (B == 0 || H == 0 || N == 0) return;

  // Buffers the caller did not ask for.
  std::unique_ptr<ScratchBuffer> attn_tmp, p_tmp, r_tmp, lp_tmp, slopes_tmp;
  if (attn == nullptr) {
    attn_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * H * tt));
    attn = attn_tmp->as<T>();
  }
  if (a.rewired && p == nullptr) {
    p_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
    p = p_tmp->as<T>();
  }
  if (a.rewired && r == nullptr) {
    r_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
    r = r_tmp->as<T>();
  }
  const double* slopes = nullptr;
  if (!a.alibi_slopes.empty()) {
    slopes_tmp.reset(new ScratchBuffer(*allocator_, sizeof(double) * H));
    copy_from_host(slopes_tmp->as<void>(), a.alibi_slopes.data(), sizeof(double) * H);
    slopes = slopes_tmp->as<double>();
  }

  // S_h = scale * Q_h K_h^T, into attn.
  gemm(dt, contiguous_gemm_args(false, true, N, N, D, B * H, a.scale, 0.0), q, k, attn);

  if (a.rewired) {
    // P = causal softmax of the runway head's un-rewired logits.
    causal_softmax_kernel<T><<<row_grid(B * N), kThreads, 0, stream_>>>(
        attn, p, B, H, 1, a.runway_head, N, slopes, nullptr, T(0));
    RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_kernel (runway head)");
    if (a.two_hop) {
      lp_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
      T* lp = lp_tmp->as<T>();
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(p, lp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
      gemm(dt, contiguous_gemm_args(false, false, N, N, N, B, 1.0, 0.0), lp, lp, r);
    } else {
      absorption_summary_kernel<T><<<elementwise_grid(B * N), kThreads, 0, stream_>>>(p, r, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("absorption_summary_kernel");
    }
  }

  // A'_h = causal softmax of S_h - beta R (R only when rewired), in place.
  causal_softmax_kernel<T><<<row_grid(B * H * N), kThreads, 0, stream_>>>(
      attn, attn, B, H, H, 0, N, slopes, a.rewired ? r : nullptr,
      static_cast<T>(a.rewired ? a.beta : 0.0));
  RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_kernel");

  // Y_h = A'_h V_h.
  gemm(dt, contiguous_gemm_args(false, false, N, D, N, B * H, 1.0, 0.0), attn, v, y);
}

template <typename T>
void CudaBackend::attention_backward_impl(const AttentionArgs& a, const T* q, const T* k,
                                          const T* v, const T* attn, const T* p, const T* dy,
                                          T* dq, T* dk, T* dv) {
  const DType dt = dtype_of<T>::value;
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t tt = N * N;
  if (B == 0 || H == 0 || N == 0 || D == 0) return;

  ScratchBuffer ds_buf(*allocator_, sizeof(T) * B * H * tt);  // dA', then dS', then dS
  T* ds = ds_buf.as<T>();

  // dV_h = A'_h^T dY_h;  dA'_h = dY_h V_h^T;  dS'_h = causal softmax backward (in place).
  gemm(dt, contiguous_gemm_args(true, false, N, D, N, B * H, 1.0, 0.0), attn, dy, dv);
  gemm(dt, contiguous_gemm_args(false, true, N, N, D, B * H, 1.0, 0.0), dy, v, ds);
  causal_softmax_backward_kernel<T><<<row_grid(B * H * N), kThreads, 0, stream_>>>(
      attn, ds, ds, B * H * N, N, tt, false);
  RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_backward_kernel");

  // Through R into the runway head.
  if (a.rewired && !a.detach && a.beta != 0.0) {
    if (p == nullptr) throw Error("cuda attention_backward: rewired backward needs the saved p");
    ScratchBuffer dr_buf(*allocator_, sizeof(T) * B * tt);
    ScratchBuffer dp_buf(*allocator_, sizeof(T) * B * tt);
    T* dr = dr_buf.as<T>();
    T* dp = dp_buf.as<T>();
    runway_dr_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(
        ds, dr, B, H, N, static_cast<T>(-a.beta));
    RUNWAY_CUDA_LAUNCH_CHECK("runway_dr_kernel");
    if (a.two_hop) {
      // dP = L(dR L(P)^T + L(P)^T dR)
      ScratchBuffer lp_buf(*allocator_, sizeof(T) * B * tt);
      T* lp = lp_buf.as<T>();
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(p, lp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
      gemm(dt, contiguous_gemm_args(false, true, N, N, N, B, 1.0, 0.0), dr, lp, dp);
      gemm(dt, contiguous_gemm_args(true, false, N, N, N, B, 1.0, 1.0), lp, dr, dp);
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(dp, dp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
    } else {
      absorption_backward_kernel<T><<<elementwise_grid(B * N), kThreads, 0, stream_>>>(dr, dp, B,
                                                                                      N);
      RUNWAY_CUDA_LAUNCH_CHECK("absorption_backward_kernel");
    }
    // dS_r += P * (dP - rowsum(dP P)): rows (b, i) of P, written into head r of ds.
    causal_softmax_backward_kernel<T><<<row_grid(B * N), kThreads, 0, stream_>>>(
        p, dp, ds + a.runway_head * tt, B * N, N, H * tt, true);
    RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_backward_kernel (runway head)");
  }

  // dQ_h = scale * dS_h K_h;  dK_h = scale * dS_h^T Q_h.
  gemm(dt, contiguous_gemm_args(false, false, N, D, N, B * H, a.scale, 0.0), ds, k, dq);
  gemm(dt, contiguous_gemm_args(true, false, N, D, N, B * H, a.scale, 0.0), ds, q, dk);
}

void CudaBackend::attention_forward_cuda(DType dt, const AttentionArgs& args, const void* q,
                                    const void* k, const void* v, void* y, void* attn, void* p,
                                    void* r) {
  check_attention_args("attention_forward", args);
  dispatch_float(dt, "attention_forward", [&](auto tag) {
    using T = decltype(tag);
    attention_forward_impl<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                              static_cast<const T*>(v), static_cast<T*>(y), static_cast<T*>(attn),
                              static_cast<T*>(p), static_cast<T*>(r));
  });
}

void CudaBackend::attention_backward_cuda(DType dt, const AttentionArgs& args, const void* q,
                                     const void* k, const void* v, const void* attn,
                                     const void* p, const void* dy, void* dq, void* dk,
                                     void* dv) {
  check_attention_args("attention_backward", args);
  dispatch_float(dt, "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    attention_backward_impl<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                               static_cast<const T*>(v), static_cast<const T*>(attn),
                               static_cast<const T*>(p), static_cast<const T*>(dy),
                               static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

void CudaBackend::rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim,
                       double base, int64_t position_offset, bool inverse) {
  check_nonnegative("rope", "rows", rows);
  check_nonnegative("rope", "seq", seq);
  check_nonnegative("rope", "dim", dim);
  if (dim % 2 != 0) throw Error("cuda rope: dim must be even, got " + std::to_string(dim));
  dispatch_float(dt, "rope", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = rows * seq * (dim / 2);
    if (n == 0) return;
    rope_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, seq, dim, base, position_offset,
        inverse ? -1.0 : 1.0);
    RUNWAY_CUDA_LAUNCH_CHECK("rope_kernel");
  });
}

// The registered implementations (engine/fused_kernel.h) of the kernels attention_forward
// and attention_backward (engine/ops/attention.cpp).
static void cuda_attention_forward(Backend& b, DType dt, const AttentionArgs& args, const void* q, const void* k,
                                   const void* v, void* y, void* attn, void* p, void* r) {
  cuda_backend_of(b, "attention_forward").attention_forward_cuda(dt, args, q, k, v, y, attn, p, r);
}

static void cuda_attention_backward(Backend& b, DType dt, const AttentionArgs& args, const void* q, const void* k,
                                    const void* v, const void* attn, const void* p, const void* dy, void* dq,
                                    void* dk, void* dv) {
  cuda_backend_of(b, "attention_backward").attention_backward_cuda(dt, args, q, k, v, attn, p, dy, dq, dk, dv);
}

void register_attention_cuda_kernels() {
  register_fused_kernel("attention_forward", Device::CUDA, &cuda_attention_forward);
  register_fused_kernel("attention_backward", Device::CUDA, &cuda_attention_backward);
}

}  // namespace runway
