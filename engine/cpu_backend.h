// The CPU implementation of runway::Backend (engine/backend.h): plain loops (OpenMP
// over rows where it pays) and OpenBLAS gemm. Every kernel is templated on the element
// type and instantiated for float and double (engine/cpu_kernels.h's dispatch_float).
//
// Declarations only. Memory and the backend registry are defined in
// engine/cpu_backend.cpp; each kernel is defined beside the op it serves, in its op
// family's file under engine/ops/ (see docs/architecture.md for the map). The fused
// kernels' CPU implementations are not methods: they are registered by name from their
// family's file (engine/fused_kernel.h).
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/backend.h"

namespace runway {

class CpuBackend final : public Backend {
 public:
  // The engine threads gemm itself (see the gemm_group kernel, engine/ops/linear.cpp):
  // OpenBLAS stays in the calling thread.
  CpuBackend();
  ~CpuBackend() override;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu (OpenBLAS)"; }

  // ---- memory ---------------------------------------------------------------
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t nbytes) override;
  void copy_within(void* dst, const void* src, size_t nbytes) override;

  // ---- layout -----------------------------------------------------------------
  void fill(DType dt, void* dst, int64_t n, double value) override;
  void strided_copy(DType dt, const StridedView& src, void* dst) override;
  void cast(DType from, const void* src, DType to, void* dst, int64_t n) override;

  // ---- elementwise ------------------------------------------------------------
  void unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) override;
  void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b,
              void* out) override;

  // ---- linear algebra -----------------------------------------------------------
  void gemm(DType dt, const GemmArgs& args, const void* a, const void* b, void* c) override;

  // ---- row kernels ----------------------------------------------------------------
  void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;
  void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;

  // ---- positions ------------------------------------------------------------------------
  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override;

 private:
  // Cache blocks of 64 KiB and more: glibc serves blocks from 128 KiB up with mmap, so
  // without the cache every parameter-sized gradient (128 KiB - 1 MiB in a small model)
  // was page-faulted and zeroed afresh each step.
  static constexpr size_t kCachedMin = size_t(64) << 10;
  static constexpr size_t kCacheLimit = size_t(2) << 30;  // hold at most 2 GiB of free blocks
  std::mutex cache_mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;
  std::unordered_map<void*, size_t> block_sizes_;
  size_t cached_bytes_ = 0;

  void release_cache();
};

}  // namespace runway
