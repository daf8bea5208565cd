// The CUDA backend's setup, memory and layout primitives (fill, cast). Each op family's kernels and their
// launches are in cuda/ops/<family>.cu (map: docs/architecture.md). See cuda/cuda_backend.h.

#include "cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"

namespace runway {
using namespace cuda_kernels;  // the kernels and the launch constants
using namespace cuda_host;  // cuda/cuda_common.cuh

// ============================================================================
// CudaBackend: setup and memory
// ============================================================================

CudaBackend::CudaBackend() : allocator_(new cuda_detail::CachingAllocator()) {
  RUNWAY_CUDA_CHECK(cudaGetDevice(&device_index_));
  cudaDeviceProp prop{};
  RUNWAY_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index_));
  device_description_ = std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
                        std::to_string(prop.minor) + ")";
  RUNWAY_CUDA_CHECK(cudaStreamCreate(&stream_));
  try {
    RUNWAY_CUBLAS_CHECK(cublasCreate(&cublas_));
    RUNWAY_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    RUNWAY_CUBLAS_CHECK(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
    // Plain FP32/FP64 arithmetic (no TF32 tensor-op shortcuts).
    RUNWAY_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  } catch (...) {
    if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
    (void)cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  // Best effort, errors ignored: a destructor must not throw.
  (void)cudaStreamSynchronize(stream_);
  allocator_.reset();
  if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

void* CudaBackend::allocate(size_t nbytes) { return allocator_->allocate(nbytes); }

void CudaBackend::deallocate(void* ptr) { allocator_->deallocate(ptr); }

size_t CudaBackend::cached_bytes() const { return allocator_->cached_bytes(); }
size_t CudaBackend::live_bytes() const { return allocator_->live_bytes(); }

void CudaBackend::empty_cache() {
  synchronize();
  allocator_->empty_cache();
}

void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t nbytes) {
  if (nbytes == 0) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice, stream_));
  // The host buffer is pageable and the caller may reuse it as soon as we return.
  RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, nbytes, cudaMemcpyDeviceToHost, stream_));
  RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_within(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0 || dst == src) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() { RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

// ============================================================================
// Layout
// ============================================================================

void CudaBackend::fill(DType dt, void* dst, int64_t n, double value) {
  check_nonnegative("fill", "n", n);
  if (n == 0) return;
  dispatch_any(dt, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(static_cast<T*>(dst), n,
                                                                  static_cast<T>(value));
    RUNWAY_CUDA_LAUNCH_CHECK("fill_kernel");
  });
}

void CudaBackend::cast(DType from, const void* src, DType to, void* dst, int64_t n) {
  check_nonnegative("cast", "n", n);
  if (n == 0) return;
  if (from == to) {
    copy_within(dst, src, static_cast<size_t>(n) * dtype_size(from));
    return;
  }
  dispatch_any(from, [&](auto from_tag) {
    using From = decltype(from_tag);
    dispatch_any(to, [&](auto to_tag) {
      using To = decltype(to_tag);
      cast_kernel<From, To><<<elementwise_grid(n), kThreads, 0, stream_>>>(
          static_cast<const From*>(src), static_cast<To*>(dst), n);
      RUNWAY_CUDA_LAUNCH_CHECK("cast_kernel");
    });
  });
}

}  // namespace runway
