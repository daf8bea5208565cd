// A simple caching allocator for device memory.
//
// Sizes are rounded up (to 512 bytes below 1 MiB, to 2 MiB above) and freed blocks
// go to a free list keyed by the rounded size; a later request of the same rounded
// size reuses one without calling cudaMalloc. All kernels of the backend run on one
// stream, so a block handed back can be reused at once: work that still reads it was
// queued earlier on the same stream. Never uses managed memory.
#pragma once

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace runway {
namespace cuda_detail {

class CachingAllocator {
 public:
  CachingAllocator() = default;
  ~CachingAllocator();  // frees every block, ignoring errors (may run at exit)
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Returns a device block of at least nbytes (a distinct non-null block even for 0).
  // On out-of-memory, frees the cache and retries once; then throws runway::Error.
  void* allocate(size_t nbytes);
  // Returns a block from allocate() to the cache; nullptr is ignored. Throws
  // runway::Error for a pointer this allocator did not hand out.
  void deallocate(void* ptr);
  // cudaFree's every cached (unused) block.
  void empty_cache();

  size_t cached_bytes() const;  // held in free lists
  size_t live_bytes() const;    // handed out and not yet returned

  static size_t round_size(size_t nbytes);

 private:
  void free_cached_locked();  // requires mu_

  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // rounded size -> free blocks
  std::unordered_map<void*, size_t> live_;               // block -> rounded size
  size_t cached_bytes_ = 0;
  size_t live_bytes_ = 0;
};

}  // namespace cuda_detail
}  // namespace runway
