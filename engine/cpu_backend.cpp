// The CPU backend's memory (a caching allocator), its layout primitives fill and cast,
// and the backend registry. The class is declared in engine/cpu_backend.h; each compute
// kernel is defined beside the op it serves, in its family's file under engine/ops/
// (map: docs/architecture.md).
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/tensor.h"  // shape helpers

namespace runway {

using cpu::dispatch_any;
using cpu::dispatch_float;

void CpuBackend::release_cache() {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  for (auto& [size, blocks] : free_blocks_)
    for (void* p : blocks) std::free(p);
  free_blocks_.clear();
  cached_bytes_ = 0;
}

// The engine threads gemm itself (see gemm_group): OpenBLAS stays in the calling thread.
CpuBackend::CpuBackend() { openblas_set_num_threads(1); }
CpuBackend::~CpuBackend() { release_cache(); }

// Large blocks are cached by size and reused: a training step allocates the same
// activation sizes every time, and fresh large blocks cost page faults and kernel
// zeroing on every use. Small blocks go straight to the C allocator.
void* CpuBackend::allocate(size_t nbytes) {
  // 64-byte alignment for vector loads; aligned_alloc needs a multiple of it.
  const size_t rounded = (nbytes + 63) / 64 * 64;
  if (rounded >= kCachedMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = free_blocks_.find(rounded);
    if (it != free_blocks_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_bytes_ -= rounded;
      block_sizes_[p] = rounded;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) {
    release_cache();
    p = std::aligned_alloc(64, rounded);
  }
  if (!p) throw Error(fmt::format("cpu: out of memory allocating {} bytes", nbytes));
  if (rounded >= kCachedMin) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    block_sizes_[p] = rounded;
  }
  return p;
}
void CpuBackend::deallocate(void* ptr) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = block_sizes_.find(ptr);
    if (it != block_sizes_.end()) {
      const size_t size = it->second;
      block_sizes_.erase(it);
      if (cached_bytes_ + size <= kCacheLimit) {
        free_blocks_[size].push_back(ptr);
        cached_bytes_ += size;
        return;
      }
    }
  }
  std::free(ptr);
}
void CpuBackend::copy_from_host(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
void CpuBackend::copy_to_host(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
void CpuBackend::copy_within(void* dst, const void* src, size_t n) { std::memmove(dst, src, n); }

void CpuBackend::fill(DType dt, void* dst, int64_t n, double value) {
  dispatch_any(dt, [&](auto t) {
    using T = decltype(t);
    std::fill_n(static_cast<T*>(dst), n, static_cast<T>(value));
  });
}

void CpuBackend::cast(DType from, const void* src, DType to, void* dst, int64_t n) {
  dispatch_any(from, [&](auto f) {
    using F = decltype(f);
    dispatch_any(to, [&](auto t) {
      using T = decltype(t);
      const F* s = static_cast<const F*>(src);
      T* d = static_cast<T*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(s[i]);
    });
  });
}

namespace {

struct Registry {
  std::mutex mutex;
  Backend* backends[2] = {nullptr, nullptr};
  std::string unavailable[2];
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace


Backend& backend_for(Device device) {
  static CpuBackend cpu;
  if (device == Device::CPU) return cpu;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  Backend* b = r.backends[static_cast<int>(device)];
  if (!b) {
    const std::string& why = r.unavailable[static_cast<int>(device)];
    throw Error(fmt::format("no {} backend: {}", device_name(device),
                            why.empty() ? "this build of runway has no CUDA support (configure "
                                          "with -DRUNWAY_CUDA=ON) or load_backends() was not called"
                                        : why));
  }
  return *b;
}

void register_backend(Backend* backend) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.backends[static_cast<int>(backend->device())] = backend;
}

void note_backend_unavailable(Device device, const std::string& reason) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.unavailable[static_cast<int>(device)] = reason;
}

bool backend_available(Device device) {
  if (device == Device::CPU) return true;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.backends[static_cast<int>(device)] != nullptr;
}

}  // namespace runway
