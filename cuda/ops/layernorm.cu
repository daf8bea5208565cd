// The CUDA implementations of layernorm's fused kernels layernorm_forward and
// layernorm_backward (engine/ops/layernorm.cpp), registered by name (engine/fused_kernel.h)
// by register_layernorm_cuda_kernels, which cuda/register_cuda.cpp calls. Ops served: layernorm.
// The CPU kernels and the ops: engine/ops/layernorm.cpp. Map: docs/architecture.md.
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

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

static void cuda_layernorm_forward(Backend& b, DType dt, const void* x, const void* weight, const void* bias, void* y,
                                   void* mean, void* rstd, int64_t rows, int64_t cols, double eps) {
  const cudaStream_t stream = cuda_backend_of(b, "layernorm_forward").stream();
  check_nonnegative("layernorm_forward", "rows", rows);
  check_nonnegative("layernorm_forward", "cols", cols);
  dispatch_float(dt, "layernorm_forward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    layernorm_forward_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
        static_cast<T*>(y), static_cast<T*>(mean), static_cast<T*>(rstd), rows, cols,
        static_cast<T>(eps));
    RUNWAY_CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
  });
}

static void cuda_layernorm_backward(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                    const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                                    int64_t rows, int64_t cols) {
  const cudaStream_t stream = cuda_backend_of(b, "layernorm_backward").stream();
  check_nonnegative("layernorm_backward", "rows", rows);
  check_nonnegative("layernorm_backward", "cols", cols);
  dispatch_float(dt, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    const T* pdy = static_cast<const T*>(dy);
    const T* px = static_cast<const T*>(x);
    const T* pmean = static_cast<const T*>(mean);
    const T* prstd = static_cast<const T*>(rstd);
    if (dx != nullptr) {
      layernorm_backward_dx_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
          pdy, px, static_cast<const T*>(weight), pmean, prstd, static_cast<T*>(dx), rows, cols);
      RUNWAY_CUDA_LAUNCH_CHECK("layernorm_backward_dx_kernel");
    }
    if (dweight != nullptr || dbias != nullptr) {
      const unsigned grid = static_cast<unsigned>(
          std::min<int64_t>((cols + kColWidth - 1) / kColWidth, kMaxRowGrid));
      const dim3 block(kColWidth, kColRows);
      layernorm_backward_params_kernel<T><<<grid, block, 0, stream>>>(
          pdy, px, pmean, prstd, static_cast<T*>(dweight), static_cast<T*>(dbias), rows, cols);
      RUNWAY_CUDA_LAUNCH_CHECK("layernorm_backward_params_kernel");
    }
  });
}

void register_layernorm_cuda_kernels() {
  register_fused_kernel("layernorm_forward", Device::CUDA, &cuda_layernorm_forward);
  register_fused_kernel("layernorm_backward", Device::CUDA, &cuda_layernorm_backward);
}

}  // namespace runway
