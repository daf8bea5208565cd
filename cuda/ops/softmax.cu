// The CUDA implementations of the fused kernels softmax_rows, softmax_backward_rows,
// causal_mask, cross_entropy_forward and cross_entropy_backward (engine/ops/softmax.cpp),
// registered by name (engine/fused_kernel.h) by register_softmax_cuda_kernels, which
// cuda/register_cuda.cpp calls. Ops served: softmax, log_softmax, causal_mask, cross_entropy.
// The CPU kernels and the ops: engine/ops/softmax.cpp. Map: docs/architecture.md.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"
#include "engine/fused_kernel.h"

namespace runway {
namespace cuda_kernels {

// y: (rows, cols) = softmax (or log_softmax) of x: (rows, cols) over cols, computed
// with the row max m subtracted: softmax = exp(x - m) / sum, log_softmax = x - lse with
// lse = m + log(sum). A fully masked row (all -inf) uses m = 0, as the CPU backend
// does (the result is NaN either way). y may alias x.
template <typename T>
__global__ void softmax_rows_kernel(const T* x, T* y, int64_t rows, int64_t cols, bool log) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T mx = neg_infinity<T>();
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) mx = MaxOp()(mx, xr[c]);
    mx = block_reduce(mx, buf, MaxOp());
    if (mx == neg_infinity<T>()) mx = T(0);
    T sum = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) sum += dev_exp(xr[c] - mx);
    sum = block_reduce(sum, buf, SumOp());
    if (log) {
      const T lse = mx + dev_log(sum);
      for (int64_t c = threadIdx.x; c < cols; c += kThreads) yr[c] = xr[c] - lse;
    } else {
      for (int64_t c = threadIdx.x; c < cols; c += kThreads) yr[c] = dev_exp(xr[c] - mx) / sum;
    }
  }
}

// y, dy, dx: (rows, cols), y the forward output.
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)
template <typename T>
__global__ void softmax_backward_rows_kernel(const T* y, const T* dy, T* dx, int64_t rows,
                                             int64_t cols, bool log) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    T* dxr = dx + r * cols;
    T acc = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) acc += log ? dyr[c] : dyr[c] * yr[c];
    acc = block_reduce(acc, buf, SumOp());
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      dxr[c] = log ? dyr[c] - dev_exp(yr[c]) * acc : yr[c] * (dyr[c] - acc);
    }
  }
}

// x, y: (batch, t_q, t_k). y[b, i, j] = value where j > i + (t_k - t_q), else x[b, i, j].
// y may alias x.
template <typename T>
__global__ void causal_mask_kernel(const T* x, T* y, int64_t batch, int64_t t_q, int64_t t_k,
                                   T value) {
  const int64_t n = batch * t_q * t_k;
  for (int64_t idx = grid_start(); idx < n; idx += grid_step()) {
    const int64_t j = idx % t_k;
    const int64_t i = (idx / t_k) % t_q;
    y[idx] = j > i + (t_k - t_q) ? value : x[idx];
  }
}

// logits: (rows, cols); targets: (rows) int64; loss, lse: (rows).
// lse[r] = logsumexp(logits[r]) (row max subtracted); loss[r] = lse[r] - logits[r, t]
// with t = targets[r], 0 when t == ignore_index, NaN when t is out of range.
template <typename T>
__global__ void cross_entropy_forward_kernel(const T* logits, const int64_t* targets, T* loss,
                                             T* lse, int64_t rows, int64_t cols,
                                             int64_t ignore_index) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * cols;
    T mx = neg_infinity<T>();
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) mx = MaxOp()(mx, xr[c]);
    mx = block_reduce(mx, buf, MaxOp());
    T sum = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) sum += dev_exp(xr[c] - mx);
    sum = block_reduce(sum, buf, SumOp());
    if (threadIdx.x == 0) {
      const T row_lse = mx + dev_log(sum);
      lse[r] = row_lse;
      const int64_t t = targets[r];
      if (t == ignore_index) {
        loss[r] = T(0);
      } else if (t < 0 || t >= cols) {
        loss[r] = static_cast<T>(NAN);
      } else {
        loss[r] = row_lse - xr[t];
      }
    }
  }
}

// logits, dlogits: (rows, cols); targets: (rows) int64; lse: (rows) from the forward.
// dlogits[r, c] = scale * (exp(logits[r, c] - lse[r]) - (c == targets[r])), and 0 for
// the whole row when targets[r] == ignore_index.
template <typename T>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* targets,
                                              const T* lse, T* dlogits, int64_t rows,
                                              int64_t cols, int64_t ignore_index, T scale) {
  const int64_t total = rows * cols;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t r = i / cols;
    const int64_t c = i % cols;
    const int64_t t = targets[r];
    if (t == ignore_index) {
      dlogits[i] = T(0);
    } else {
      const T p_scaled = scale * dev_exp(logits[i] - lse[r]);
      dlogits[i] = c == t ? p_scaled - scale : p_scaled;
    }
  }
}

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

static void cuda_softmax_rows(Backend& b, DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  const cudaStream_t stream = cuda_backend_of(b, "softmax_rows").stream();
  check_nonnegative("softmax_rows", "rows", rows);
  check_nonnegative("softmax_rows", "cols", cols);
  dispatch_float(dt, "softmax_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    softmax_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols, log);
    RUNWAY_CUDA_LAUNCH_CHECK("softmax_rows_kernel");
  });
}

static void cuda_softmax_backward_rows(Backend& b, DType dt, const void* y, const void* dy, void* dx, int64_t rows,
                                       int64_t cols, bool log) {
  const cudaStream_t stream = cuda_backend_of(b, "softmax_backward_rows").stream();
  check_nonnegative("softmax_backward_rows", "rows", rows);
  check_nonnegative("softmax_backward_rows", "cols", cols);
  dispatch_float(dt, "softmax_backward_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    softmax_backward_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), rows, cols,
        log);
    RUNWAY_CUDA_LAUNCH_CHECK("softmax_backward_rows_kernel");
  });
}

static void cuda_causal_mask(Backend& b, DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                             double value) {
  const cudaStream_t stream = cuda_backend_of(b, "causal_mask").stream();
  check_nonnegative("causal_mask", "batch", batch);
  check_nonnegative("causal_mask", "t_q", t_q);
  check_nonnegative("causal_mask", "t_k", t_k);
  dispatch_float(dt, "causal_mask", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = batch * t_q * t_k;
    if (n == 0) return;
    causal_mask_kernel<T><<<elementwise_grid(n), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), batch, t_q, t_k, static_cast<T>(value));
    RUNWAY_CUDA_LAUNCH_CHECK("causal_mask_kernel");
  });
}

static void cuda_cross_entropy_forward(Backend& b, DType dt, const void* logits, const int64_t* targets, void* loss,
                                       void* lse, int64_t rows, int64_t cols, int64_t ignore_index) {
  const cudaStream_t stream = cuda_backend_of(b, "cross_entropy_forward").stream();
  check_nonnegative("cross_entropy_forward", "rows", rows);
  check_nonnegative("cross_entropy_forward", "cols", cols);
  dispatch_float(dt, "cross_entropy_forward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    cross_entropy_forward_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), targets, static_cast<T*>(loss), static_cast<T*>(lse),
        rows, cols, ignore_index);
    RUNWAY_CUDA_LAUNCH_CHECK("cross_entropy_forward_kernel");
  });
}

static void cuda_cross_entropy_backward(Backend& b, DType dt, const void* logits, const int64_t* targets,
                                        const void* lse, void* dlogits, int64_t rows, int64_t cols,
                                        int64_t ignore_index, double scale) {
  const cudaStream_t stream = cuda_backend_of(b, "cross_entropy_backward").stream();
  check_nonnegative("cross_entropy_backward", "rows", rows);
  check_nonnegative("cross_entropy_backward", "cols", cols);
  dispatch_float(dt, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    cross_entropy_backward_kernel<T><<<elementwise_grid(rows * cols), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), targets, static_cast<const T*>(lse),
        static_cast<T*>(dlogits), rows, cols, ignore_index, static_cast<T>(scale));
    RUNWAY_CUDA_LAUNCH_CHECK("cross_entropy_backward_kernel");
  });
}

void register_softmax_cuda_kernels() {
  register_fused_kernel("softmax_rows", Device::CUDA, &cuda_softmax_rows);
  register_fused_kernel("softmax_backward_rows", Device::CUDA, &cuda_softmax_backward_rows);
  register_fused_kernel("causal_mask", Device::CUDA, &cuda_causal_mask);
  register_fused_kernel("cross_entropy_forward", Device::CUDA, &cuda_cross_entropy_forward);
  register_fused_kernel("cross_entropy_backward", Device::CUDA, &cuda_cross_entropy_backward);
}

}  // namespace runway
