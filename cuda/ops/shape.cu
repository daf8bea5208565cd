// The CUDA backend's strided_copy: the gather behind copy and contiguous, and every layout change of the
// shape ops (engine/ops/shape.cpp).
// Ops served: reshape, permute, slice, expand, copy, concat (and the views' backward).
// The CPU kernels and the ops: engine/ops/shape.cpp. Map: docs/architecture.md.
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

namespace runway {
namespace cuda_kernels {

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

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

void CudaBackend::strided_copy(DType dt, const StridedView& src, void* dst) {
  const Layout L = make_layout("strided_copy", src.shape, src.strides, nullptr);
  const int64_t n = numel_of(src.shape);
  if (n == 0) return;
  const unsigned grid = elementwise_grid(n);
  if (dtype_size(dt) == 4) {
    const uint32_t* base = static_cast<const uint32_t*>(src.base) + src.offset;
    strided_copy_kernel<uint32_t><<<grid, kThreads, 0, stream_>>>(
        base, static_cast<uint32_t*>(dst), L, n);
  } else {
    const uint64_t* base = static_cast<const uint64_t*>(src.base) + src.offset;
    strided_copy_kernel<uint64_t><<<grid, kThreads, 0, stream_>>>(
        base, static_cast<uint64_t*>(dst), L, n);
  }
  RUNWAY_CUDA_LAUNCH_CHECK("strided_copy_kernel");
}

}  // namespace runway
