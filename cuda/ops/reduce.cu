// The CUDA backend's row reductions (CudaBackend::sum_rows, max_rows) and the CUDA
// implementation of the fused kernel cumsum_rows, registered by name (engine/fused_kernel.h)
// by register_reduce_cuda_kernels, which cuda/register_cuda.cpp calls: the kernels behind
// sum, mean, max and cumsum (engine/ops/reduce.cpp).
// Ops served: sum, max, cumsum.
// The CPU kernels and the ops: engine/ops/reduce.cpp. Map: docs/architecture.md.
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

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

void CudaBackend::sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  check_nonnegative("sum_rows", "rows", rows);
  check_nonnegative("sum_rows", "cols", cols);
  dispatch_float(dt, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    sum_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols);
    RUNWAY_CUDA_LAUNCH_CHECK("sum_rows_kernel");
  });
}

void CudaBackend::max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  check_nonnegative("max_rows", "rows", rows);
  check_nonnegative("max_rows", "cols", cols);
  dispatch_float(dt, "max_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    max_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols);
    RUNWAY_CUDA_LAUNCH_CHECK("max_rows_kernel");
  });
}

static void cuda_cumsum_rows(Backend& b, DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                             bool reverse) {
  const cudaStream_t stream = cuda_backend_of(b, "cumsum_rows").stream();
  check_nonnegative("cumsum_rows", "rows", rows);
  check_nonnegative("cumsum_rows", "cols", cols);
  dispatch_float(dt, "cumsum_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    cumsum_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols, exclusive, reverse);
    RUNWAY_CUDA_LAUNCH_CHECK("cumsum_rows_kernel");
  });
}

void register_reduce_cuda_kernels() {
  register_fused_kernel("cumsum_rows", Device::CUDA, &cuda_cumsum_rows);
}

}  // namespace runway
