// The CUDA implementations of rmsnorm's fused kernels rmsnorm_forward and rmsnorm_backward
// (engine/ops/rmsnorm.cpp), registered by name (engine/fused_kernel.h) by
// register_rmsnorm_cuda_kernels, which cuda/register_cuda.cpp calls. Ops served: rmsnorm.
// The CPU kernels and the op: engine/ops/rmsnorm.cpp. Map: docs/architecture.md.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"
#include "engine/fused_kernel.h"

namespace runway {
namespace cuda_kernels {

// x, y: (rows, cols); weight: (cols); rstd: (rows). One block per row (grid-strided):
// rstd = 1 / sqrt(sum(x^2) / cols + eps), y = x * rstd * weight.
template <typename T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* weight, T* y, T* rstd_out, int64_t rows, int64_t cols,
                                       T eps) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T sq = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) sq += xr[c] * xr[c];
    const T mean_sq = block_reduce(sq, buf, SumOp()) / static_cast<T>(cols);
    const T rstd = T(1) / dev_sqrt(mean_sq + eps);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) yr[c] = xr[c] * rstd * weight[c];
    if (threadIdx.x == 0) rstd_out[r] = rstd;
  }
}

// dy, x, dx: (rows, cols); weight: (cols); rstd: (rows). With xhat = x * rstd and
// dxhat = dy * weight: dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
template <typename T>
__global__ void rmsnorm_backward_dx_kernel(const T* dy, const T* x, const T* weight, const T* rstd, T* dx,
                                           int64_t rows, int64_t cols) {
  __shared__ T buf[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* dyr = dy + r * cols;
    const T* xr = x + r * cols;
    T* dxr = dx + r * cols;
    const T rs = rstd[r];
    T sum_dxhat_xhat = T(0);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) sum_dxhat_xhat += dyr[c] * weight[c] * (xr[c] * rs);
    const T mean_dxhat_xhat = block_reduce(sum_dxhat_xhat, buf, SumOp()) / static_cast<T>(cols);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads)
      dxr[c] = rs * (dyr[c] * weight[c] - xr[c] * rs * mean_dxhat_xhat);
  }
}

constexpr int kRmsColWidth = 32;  // columns per block in the column reduction
constexpr int kRmsColRows = 8;    // thread rows per block in the column reduction

// dweight[c] += sum_r dy[r, c] * x[r, c] * rstd[r]. A block of kRmsColWidth x kRmsColRows
// threads owns kRmsColWidth columns: each thread row strides over the rows (coalesced along
// columns), then the kRmsColRows partial sums are added in shared memory. Deterministic; no
// atomics (layernorm's dweight reduction, without dbias).
template <typename T>
__global__ void rmsnorm_backward_dweight_kernel(const T* dy, const T* x, const T* rstd, T* dweight, int64_t rows,
                                                int64_t cols) {
  __shared__ T part[kRmsColRows][kRmsColWidth + 1];
  const int tx = static_cast<int>(threadIdx.x);
  const int ty = static_cast<int>(threadIdx.y);
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * kRmsColWidth; c0 < cols;
       c0 += static_cast<int64_t>(gridDim.x) * kRmsColWidth) {
    const int64_t c = c0 + tx;
    T acc = T(0);
    if (c < cols)
      for (int64_t r = ty; r < rows; r += kRmsColRows) acc += dy[r * cols + c] * (x[r * cols + c] * rstd[r]);
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < cols) {
      T total = T(0);
      for (int k = 0; k < kRmsColRows; ++k) total += part[k][tx];
      dweight[c] += total;
    }
    __syncthreads();  // part is rewritten by the next column block
  }
}

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

// The kernels' signatures (after the Backend&) are engine/ops/rmsnorm.cpp's; a difference
// is an Error naming the kernel when registering.
static void cuda_rmsnorm_forward(Backend& b, DType dt, const void* x, const void* weight, void* y, void* rstd,
                                 int64_t rows, int64_t cols, double eps) {
  const cudaStream_t stream = cuda_backend_of(b, "rmsnorm_forward").stream();
  check_nonnegative("rmsnorm_forward", "rows", rows);
  check_nonnegative("rmsnorm_forward", "cols", cols);
  dispatch_float(dt, "rmsnorm_forward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    rmsnorm_forward_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<T*>(y), static_cast<T*>(rstd), rows,
        cols, static_cast<T>(eps));
    RUNWAY_CUDA_LAUNCH_CHECK("rmsnorm_forward_kernel");
  });
}

static void cuda_rmsnorm_backward(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                  const void* rstd, void* dx, void* dweight, int64_t rows, int64_t cols) {
  const cudaStream_t stream = cuda_backend_of(b, "rmsnorm_backward").stream();
  check_nonnegative("rmsnorm_backward", "rows", rows);
  check_nonnegative("rmsnorm_backward", "cols", cols);
  dispatch_float(dt, "rmsnorm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    const T* pdy = static_cast<const T*>(dy);
    const T* px = static_cast<const T*>(x);
    const T* prstd = static_cast<const T*>(rstd);
    rmsnorm_backward_dx_kernel<T><<<row_grid(rows), kThreads, 0, stream>>>(
        pdy, px, static_cast<const T*>(weight), prstd, static_cast<T*>(dx), rows, cols);
    RUNWAY_CUDA_LAUNCH_CHECK("rmsnorm_backward_dx_kernel");
    const unsigned grid =
        static_cast<unsigned>(std::min<int64_t>((cols + kRmsColWidth - 1) / kRmsColWidth, kMaxRowGrid));
    const dim3 block(kRmsColWidth, kRmsColRows);
    rmsnorm_backward_dweight_kernel<T><<<grid, block, 0, stream>>>(pdy, px, prstd, static_cast<T*>(dweight), rows,
                                                                     cols);
    RUNWAY_CUDA_LAUNCH_CHECK("rmsnorm_backward_dweight_kernel");
  });
}

void register_rmsnorm_cuda_kernels() {
  register_fused_kernel("rmsnorm_forward", Device::CUDA, &cuda_rmsnorm_forward);
  register_fused_kernel("rmsnorm_backward", Device::CUDA, &cuda_rmsnorm_backward);
}

}  // namespace runway
