// A Backend that forwards to another backend, for tests.
//
// It reports its own device (e.g. Device::CUDA served by the CPU backend's memory and
// kernels: every "CUDA" tensor is then host memory, so device plumbing can be tested
// without a GPU) and, with Forward::PrimitivesOnly, forwards only the primitives of
// engine/backend.h (memory, layout, elementwise, gemm, row reductions): every fused
// kernel then runs its default composed from those primitives (has_fused_kernels() is
// false, so engine/fused_kernel.h picks the defaults),
// which is how tests/test_backend_defaults.cpp proves that a backend implementing only the
// primitives runs every op. With Forward::All the fused kernels registered for the
// target's device run (kernel_device() is the target's).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"

namespace runway::testing {

class DelegatingBackend : public Backend {
 public:
  enum class Forward {
    All,             // every kernel goes to the target
    PrimitivesOnly,  // fused kernels run Backend's defaults on top of the target's primitives
  };

  DelegatingBackend(Backend& target, Device device, std::string name, Forward forward = Forward::All)
      : target_(target), device_(device), name_(std::move(name)), forward_(forward) {}

  Device device() const override { return device_; }
  std::string name() const override { return name_; }
  Forward forward() const { return forward_; }
  // The fused kernels registered by name (engine/fused_kernel.h): the target's, or none
  // (every kernel's default) with PrimitivesOnly.
  Device kernel_device() const override { return target_.kernel_device(); }
  bool has_fused_kernels() const override { return all() && target_.has_fused_kernels(); }

  // ---- primitives: always forwarded ---------------------------------------------------
  void* allocate(size_t nbytes) override { return target_.allocate(nbytes); }
  void deallocate(void* ptr) override { target_.deallocate(ptr); }
  void copy_from_host(void* dst, const void* host_src, size_t nbytes) override {
    target_.copy_from_host(dst, host_src, nbytes);
  }
  void copy_to_host(void* host_dst, const void* src, size_t nbytes) override {
    target_.copy_to_host(host_dst, src, nbytes);
  }
  void copy_within(void* dst, const void* src, size_t nbytes) override { target_.copy_within(dst, src, nbytes); }
  void synchronize() override { target_.synchronize(); }
  void fill(DType dt, void* dst, int64_t n, double value) override { target_.fill(dt, dst, n, value); }
  void strided_copy(DType dt, const StridedView& src, void* dst) override { target_.strided_copy(dt, src, dst); }
  void cast(DType from, const void* src, DType to, void* dst, int64_t n) override {
    target_.cast(from, src, to, dst, n);
  }
  void unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) override {
    target_.unary(op, dt, x, y, n, param);
  }
  void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b, void* out) override {
    target_.binary(op, dt, plan, a, b, out);
  }
  void gemm(DType dt, const GemmArgs& args, const void* a, const void* b, void* c) override {
    target_.gemm(dt, args, a, b, c);
  }
  void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override {
    target_.sum_rows(dt, x, y, rows, cols);
  }
  void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override {
    target_.max_rows(dt, x, y, rows, cols);
  }

  // No default yet: always the target's.
  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override {
    target_.rope(dt, x, y, rows, seq, dim, base, position_offset, inverse);
  }

 private:
  bool all() const { return forward_ == Forward::All; }

  Backend& target_;
  Device device_;
  std::string name_;
  Forward forward_;
};

}  // namespace runway::testing
