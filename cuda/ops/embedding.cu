// The CUDA implementations of embedding's fused kernels: the lookup (embedding_forward) and
// its scatter-add backward (embedding_backward) of engine/ops/embedding.cpp, registered by
// name (engine/fused_kernel.h) by register_embedding_cuda_kernels, which
// cuda/register_cuda.cpp calls. Ops served: embedding.
// The CPU kernels and the ops: engine/ops/embedding.cpp. Map: docs/architecture.md.
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

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

static void cuda_embedding_forward(Backend& b, DType dt, const void* weight, const int64_t* ids, void* out, int64_t n,
                                   int64_t dim) {
  const cudaStream_t stream = cuda_backend_of(b, "embedding_forward").stream();
  check_nonnegative("embedding_forward", "n", n);
  check_nonnegative("embedding_forward", "dim", dim);
  dispatch_float(dt, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0 || dim == 0) return;
    embedding_forward_kernel<T><<<elementwise_grid(n * dim), kThreads, 0, stream>>>(
        static_cast<const T*>(weight), ids, static_cast<T*>(out), n, dim);
    RUNWAY_CUDA_LAUNCH_CHECK("embedding_forward_kernel");
  });
}

static void cuda_embedding_backward(Backend& b, DType dt, const void* dout, const int64_t* ids, void* dweight,
                                    int64_t n, int64_t dim) {
  const cudaStream_t stream = cuda_backend_of(b, "embedding_backward").stream();
  check_nonnegative("embedding_backward", "n", n);
  check_nonnegative("embedding_backward", "dim", dim);
  dispatch_float(dt, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0 || dim == 0) return;
    embedding_backward_kernel<T><<<elementwise_grid(n * dim), kThreads, 0, stream>>>(
        static_cast<const T*>(dout), ids, static_cast<T*>(dweight), n, dim);
    RUNWAY_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
  });
}

void register_embedding_cuda_kernels() {
  register_fused_kernel("embedding_forward", Device::CUDA, &cuda_embedding_forward);
  register_fused_kernel("embedding_backward", Device::CUDA, &cuda_embedding_backward);
}

}  // namespace runway
