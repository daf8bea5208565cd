// The device code of the CUDA backend: kernels and their helpers. Included only by
// cuda/cuda_backend.cu, which launches them.
//
// Conventions:
//  * elementwise kernels use one thread per element in a grid-stride loop;
//  * row kernels ("rows x cols", the last dimension) use one block of kThreads
//    threads per row (grid-stride over rows), with shared-memory tree reductions;
//  * all indices are int64; every buffer is contiguous unless a Layout says otherwise.
// Every compute kernel is templated on the element type T (float or double); each
// has a comment giving the shapes of its arguments.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_backend.h"
#include "engine/backend.h"

namespace runway {
namespace cuda_kernels {

constexpr int kThreads = 256;                  // threads per block (a power of two)
constexpr int64_t kMaxGrid = int64_t{1} << 20;  // cap on blocks for grid-stride loops
constexpr int64_t kMaxRowGrid = 65535;          // cap on blocks for row kernels
constexpr int kMaxDims = CudaBackend::kMaxDims;

// ============================================================================
// Device helpers
// ============================================================================

__device__ inline float dev_exp(float x) { return expf(x); }
__device__ inline double dev_exp(double x) { return exp(x); }
__device__ inline float dev_log(float x) { return logf(x); }
__device__ inline double dev_log(double x) { return log(x); }
__device__ inline float dev_sqrt(float x) { return sqrtf(x); }
__device__ inline double dev_sqrt(double x) { return sqrt(x); }
__device__ inline float dev_tanh(float x) { return tanhf(x); }
__device__ inline double dev_tanh(double x) { return tanh(x); }
__device__ inline float dev_pow(float x, float p) { return powf(x, p); }
__device__ inline double dev_pow(double x, double p) { return pow(x, p); }
__device__ inline float dev_abs(float x) { return fabsf(x); }
__device__ inline double dev_abs(double x) { return fabs(x); }

// atomicAdd for double needs sm_60 or newer (the default build targets sm_90).
__device__ inline void dev_atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void dev_atomic_add(double* p, double v) { atomicAdd(p, v); }

template <typename T>
__device__ inline T neg_infinity() {
  return static_cast<T>(-INFINITY);
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Reduces one value per thread over the whole block (blockDim.x == kThreads) and
// returns the result to every thread. `buf` is kThreads elements of shared memory;
// it may be reused right after the call returns.
template <typename T, typename Op>
__device__ T block_reduce(T value, T* buf, Op op) {
  const int tid = static_cast<int>(threadIdx.x);
  buf[tid] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (tid < half) buf[tid] = op(buf[tid], buf[tid + half]);
    __syncthreads();
  }
  const T result = buf[0];
  __syncthreads();
  return result;
}

// First element and step of a grid-stride loop over elements.
__device__ inline int64_t grid_start() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Shape and up to two sets of strides, passed to kernels by value.
struct Layout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride_a[kMaxDims] = {};
  int64_t stride_b[kMaxDims] = {};
};

// Element offsets, under stride_a and stride_b, of the row-major linear index i.
__device__ inline void layout_offsets(const Layout& L, int64_t i, int64_t* off_a,
                                      int64_t* off_b) {
  int64_t a = 0, b = 0;
  for (int d = L.ndim - 1; d >= 0; --d) {
    const int64_t idx = i % L.shape[d];
    i /= L.shape[d];
    a += idx * L.stride_a[d];
    b += idx * L.stride_b[d];
  }
  *off_a = a;
  *off_b = b;
}

// ============================================================================
// Layout kernels
// ============================================================================

// dst: (n) = value.
template <typename T>
__global__ void fill_kernel(T* dst, int64_t n, T value) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) dst[i] = value;
}

// dst: contiguous, shape L.shape; element i comes from src[offset of i under L.stride_a].
// T is an unsigned integer of the element's size: this is a bit copy.
template <typename T>
__global__ void strided_copy_kernel(const T* src, T* dst, Layout L, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) {
    int64_t off = 0, unused = 0;
    layout_offsets(L, i, &off, &unused);
    dst[i] = src[off];
  }
}

// dst: (n) = To(src: (n)).
template <typename From, typename To>
__global__ void cast_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) dst[i] = static_cast<To>(src[i]);
}

// ============================================================================
// Elementwise kernels
// ============================================================================

template <typename T>
__device__ inline T unary_value(UnaryOp op, T x, T p) {
  const T kGeluC = static_cast<T>(0.7978845608028654);  // sqrt(2 / pi)
  const T kGeluA = static_cast<T>(0.044715);
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return dev_exp(x);
    case UnaryOp::Log: return dev_log(x);
    case UnaryOp::Sqrt: return dev_sqrt(x);
    case UnaryOp::Tanh: return dev_tanh(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + dev_exp(-x));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Gelu: {
      const T t = dev_tanh(kGeluC * (x + kGeluA * x * x * x));
      return T(0.5) * x * (T(1) + t);
    }
    case UnaryOp::ReluGrad: return x > T(0) ? T(1) : T(0);
    case UnaryOp::GeluGrad: {
      // d/dx [0.5 x (1 + tanh(u))], u = c (x + a x^3):
      //   0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) c (1 + 3 a x^2)
      const T t = dev_tanh(kGeluC * (x + kGeluA * x * x * x));
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * kGeluC * (T(1) + T(3) * kGeluA * x * x);
    }
    case UnaryOp::AddScalar: return x + p;
    case UnaryOp::MulScalar: return x * p;
    case UnaryOp::PowScalar: return dev_pow(x, p);
    case UnaryOp::Abs: return dev_abs(x);
  }
  return x;  // unreachable: every op is handled above
}

template <typename T>
__device__ inline T binary_value(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return dev_pow(a, b);
    case BinaryOp::Equal: return a == b ? T(1) : T(0);
    case BinaryOp::Greater: return a > b ? T(1) : T(0);
  }
  return a;  // unreachable
}

// y: (n) = op(x: (n), param). y may alias x.
template <typename T>
__global__ void unary_kernel(UnaryOp op, const T* x, T* y, int64_t n, T param) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) y[i] = unary_value(op, x[i], param);
}

// out: (n) = op(a: (n), b: (n)), all contiguous with the same shape.
template <typename T>
__global__ void binary_contiguous_kernel(BinaryOp op, const T* a, const T* b, T* out,
                                         int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) out[i] = binary_value(op, a[i], b[i]);
}

// out: contiguous, shape L.shape; a and b read through L.stride_a / L.stride_b
// (0 on broadcast dims).
template <typename T>
__global__ void binary_broadcast_kernel(BinaryOp op, const T* a, const T* b, T* out, Layout L,
                                        int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) {
    int64_t oa = 0, ob = 0;
    layout_offsets(L, i, &oa, &ob);
    out[i] = binary_value(op, a[oa], b[ob]);
  }
}

// c: `batch` matrices (m x n, row stride ldc, batch stride stride_c) = beta * c
// (0 when beta == 0, so NaNs in c do not propagate). Used for gemm with k == 0.
template <typename T>
__global__ void scale_matrices_kernel(T* c, int64_t batch, int64_t m, int64_t n, int64_t ldc,
                                      int64_t stride_c, T beta) {
  const int64_t total = batch * m * n;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t bi = i / (m * n);
    const int64_t r = (i / n) % m;
    const int64_t col = i % n;
    T* p = c + bi * stride_c + r * ldc + col;
    *p = beta == T(0) ? T(0) : beta * *p;
  }
}

// ============================================================================
// Row kernels: x is (rows, cols); one block per row.
// ============================================================================

// y: (rows) = sum of x: (rows, cols) over cols, accumulated in double (as the CPU
// backend does, so float32 sums of long rows stay accurate).
template <typename T>
__global__ void sum_rows_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  __shared__ double buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    double acc = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) acc += static_cast<double>(xr[c]);
    acc = block_reduce(acc, buf, SumOp());
    if (threadIdx.x == 0) y[r] = static_cast<T>(acc);
  }
}

// y: (rows) = max of x: (rows, cols) over cols (-inf for cols == 0).
template <typename T>
__global__ void max_rows_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T acc = neg_infinity<T>();
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) acc = MaxOp()(acc, xr[c]);
    acc = block_reduce(acc, buf, MaxOp());
    if (threadIdx.x == 0) y[r] = acc;
  }
}

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

// y: (rows, cols) = cumulative sum of x: (rows, cols) along cols; `reverse` scans from
// the last column, `exclusive` leaves out the element itself. Each row is scanned in
// chunks of kThreads elements (Hillis-Steele scan in shared memory) plus a running
// carry from the earlier chunks. y may alias x.
template <typename T>
__global__ void cumsum_rows_kernel(const T* x, T* y, int64_t rows, int64_t cols, bool exclusive,
                                   bool reverse) {
  __shared__ T buf[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T carry = T(0);
    for (int64_t start = 0; start < cols; start += kThreads) {
      const int64_t k = start + tid;                    // position in scan order
      const int64_t col = reverse ? cols - 1 - k : k;  // column it maps to
      buf[tid] = k < cols ? xr[col] : T(0);
      __syncthreads();
      for (int offset = 1; offset < kThreads; offset <<= 1) {
        const T add = tid >= offset ? buf[tid - offset] : T(0);
        __syncthreads();
        buf[tid] += add;
        __syncthreads();
      }
      // buf now holds the inclusive scan of the chunk.
      const T within = exclusive ? (tid > 0 ? buf[tid - 1] : T(0)) : buf[tid];
      if (k < cols) yr[col] = carry + within;
      carry += buf[kThreads - 1];
      __syncthreads();  // buf is rewritten by the next chunk
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

// ============================================================================
// Fused layers
// ============================================================================

// x, y: (rows, cols); weight, bias: (cols) (null = 1 / 0); mean, rstd: (rows).
// mean = sum(x) / cols, var = sum((x - mean)^2) / cols (two-pass),
// rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * weight + bias.
template <typename T>
__global__ void layernorm_forward_kernel(const T* x, const T* weight, const T* bias, T* y,
                                         T* mean_out, T* rstd_out, int64_t rows, int64_t cols,
                                         T eps) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T sum = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) sum += xr[c];
    const T mean = block_reduce(sum, buf, SumOp()) / static_cast<T>(cols);
    T sq = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const T d = xr[c] - mean;
      sq += d * d;
    }
    const T var = block_reduce(sq, buf, SumOp()) / static_cast<T>(cols);
    const T rstd = T(1) / dev_sqrt(var + eps);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const T w = weight != nullptr ? weight[c] : T(1);
      const T b = bias != nullptr ? bias[c] : T(0);
      yr[c] = (xr[c] - mean) * rstd * w + b;
    }
    if (threadIdx.x == 0) {
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  }
}

// dy, x, dx: (rows, cols); weight: (cols) (null = 1); mean, rstd: (rows).
// With xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - sum(g) / cols - xhat * sum(g * xhat) / cols)
template <typename T>
__global__ void layernorm_backward_dx_kernel(const T* dy, const T* x, const T* weight,
                                             const T* mean, const T* rstd, T* dx, int64_t rows,
                                             int64_t cols) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* dyr = dy + r * cols;
    const T* xr = x + r * cols;
    T* dxr = dx + r * cols;
    const T m = mean[r];
    const T rs = rstd[r];
    T sum_g = T(0), sum_gx = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const T g = dyr[c] * (weight != nullptr ? weight[c] : T(1));
      sum_g += g;
      sum_gx += g * ((xr[c] - m) * rs);
    }
    sum_g = block_reduce(sum_g, buf, SumOp());
    sum_gx = block_reduce(sum_gx, buf, SumOp());
    const T mean_g = sum_g / static_cast<T>(cols);
    const T mean_gx = sum_gx / static_cast<T>(cols);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const T g = dyr[c] * (weight != nullptr ? weight[c] : T(1));
      const T xhat = (xr[c] - m) * rs;
      dxr[c] = rs * (g - mean_g - xhat * mean_gx);
    }
  }
}

constexpr int kColWidth = 32;  // columns per block in the column reduction
constexpr int kColRows = 8;    // thread rows per block in the column reduction

// dy, x: (rows, cols); mean, rstd: (rows); dweight, dbias: (cols) (either may be null).
//   dweight[c] += sum_r dy[r, c] * xhat[r, c],  dbias[c] += sum_r dy[r, c]
// A block of kColWidth x kColRows threads owns kColWidth columns: each thread row
// strides over the rows (coalesced along columns), then the kColRows partial sums are
// added in shared memory. Deterministic; no atomics.
template <typename T>
__global__ void layernorm_backward_params_kernel(const T* dy, const T* x, const T* mean,
                                                 const T* rstd, T* dweight, T* dbias,
                                                 int64_t rows, int64_t cols) {
  __shared__ T part_w[kColRows][kColWidth + 1];
  __shared__ T part_b[kColRows][kColWidth + 1];
  const int tx = static_cast<int>(threadIdx.x);
  const int ty = static_cast<int>(threadIdx.y);
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * kColWidth; c0 < cols;
       c0 += static_cast<int64_t>(gridDim.x) * kColWidth) {
    const int64_t c = c0 + tx;
    T acc_w = T(0), acc_b = T(0);
    if (c < cols) {
      for (int64_t r = ty; r < rows; r += kColRows) {
        const T g = dy[r * cols + c];
        acc_w += g * ((x[r * cols + c] - mean[r]) * rstd[r]);
        acc_b += g;
      }
    }
    part_w[ty][tx] = acc_w;
    part_b[ty][tx] = acc_b;
    __syncthreads();
    if (ty == 0 && c < cols) {
      T total_w = T(0), total_b = T(0);
      for (int k = 0; k < kColRows; ++k) {
        total_w += part_w[k][tx];
        total_b += part_b[k][tx];
      }
      if (dweight != nullptr) dweight[c] += total_w;
      if (dbias != nullptr) dbias[c] += total_b;
    }
    __syncthreads();  // part_* are rewritten by the next column block
  }
}

// weight: (V, dim); ids: (n) int64; out: (n, dim). out[r, :] = weight[ids[r], :].
template <typename T>
__global__ void embedding_forward_kernel(const T* weight, const int64_t* ids, T* out, int64_t n,
                                         int64_t dim) {
  const int64_t total = n * dim;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t r = i / dim;
    const int64_t c = i % dim;
    out[i] = weight[ids[r] * dim + c];
  }
}

// dout: (n, dim); ids: (n) int64; dweight: (V, dim). dweight[ids[r], :] += dout[r, :]
// (atomic, since ids may repeat).
template <typename T>
__global__ void embedding_backward_kernel(const T* dout, const int64_t* ids, T* dweight,
                                          int64_t n, int64_t dim) {
  const int64_t total = n * dim;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t r = i / dim;
    const int64_t c = i % dim;
    dev_atomic_add(&dweight[ids[r] * dim + c], dout[i]);
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

// ============================================================================
// Attention and RoPE kernels. Shapes: q, k, v, y (B, H, T, D); logits and attention
// (B, H, T, T); runway P and R (B, T, T). Names follow engine/attention.h.
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
}  // namespace runway
