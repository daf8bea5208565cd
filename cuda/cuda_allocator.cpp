#include "cuda/cuda_allocator.h"

#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_check.h"

namespace runway {
namespace cuda_detail {

size_t CachingAllocator::round_size(size_t nbytes) {
  constexpr size_t kSmallUnit = 512;
  constexpr size_t kLargeUnit = size_t{2} << 20;
  constexpr size_t kSmallLimit = size_t{1} << 20;
  if (nbytes == 0) nbytes = 1;
  const size_t unit = nbytes < kSmallLimit ? kSmallUnit : kLargeUnit;
  return (nbytes + unit - 1) / unit * unit;
}

CachingAllocator::~CachingAllocator() {
  // Best effort: at process exit the CUDA runtime may already be unloading, so
  // errors are ignored here (a destructor must not throw).
  for (auto& entry : free_) {
    for (void* p : entry.second) (void)cudaFree(p);
  }
  for (auto& entry : live_) (void)cudaFree(entry.first);
  (void)cudaGetLastError();
}

void* CachingAllocator::allocate(size_t nbytes) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    cached_bytes_ -= size;
    live_.emplace(p, size);
    live_bytes_ += size;
    return p;
  }
  void* p = nullptr;
  cudaError_t status = cudaMalloc(&p, size);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear it so later launch checks don't report it
    free_cached_locked();
    status = cudaMalloc(&p, size);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw Error("cuda: out of memory allocating " + std::to_string(nbytes) +
                  " bytes (" + std::to_string(live_bytes_) + " bytes in use by the backend)");
    }
  }
  RUNWAY_CUDA_CHECK(status);
  live_.emplace(p, size);
  live_bytes_ += size;
  return p;
}

void CachingAllocator::deallocate(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    throw Error("cuda: deallocate of a pointer the CUDA backend did not allocate");
  }
  const size_t size = it->second;
  live_.erase(it);
  live_bytes_ -= size;
  free_[size].push_back(ptr);
  cached_bytes_ += size;
}

void CachingAllocator::free_cached_locked() {
  // cudaFree synchronizes the device, so no queued kernel still uses these blocks.
  for (auto& entry : free_) {
    std::vector<void*>& blocks = entry.second;
    while (!blocks.empty()) {
      void* p = blocks.back();
      blocks.pop_back();
      cached_bytes_ -= entry.first;
      RUNWAY_CUDA_CHECK(cudaFree(p));
    }
  }
  free_.clear();
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  free_cached_locked();
}

size_t CachingAllocator::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

size_t CachingAllocator::live_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_bytes_;
}

}  // namespace cuda_detail
}  // namespace runway
