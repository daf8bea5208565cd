// A Backend that forwards to another backend, for tests.
//
// It reports its own device (e.g. Device::CUDA served by the CPU backend's memory and
// kernels: every "CUDA" tensor is then host memory, so device plumbing can be tested
// without a GPU) and, with Forward::PrimitivesOnly, forwards only the primitives of
// engine/backend.h (memory, layout, elementwise, gemm, row reductions): every fused
// kernel then runs Backend's default composed from those primitives, which is how
// tests/test_backend_defaults.cpp proves that a backend implementing only the
// primitives runs every op.
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

  // ---- fused kernels: forwarded, or Backend's default ------------------------------------
  void gelu_forward(DType dt, const void* x, void* y, void* dydx, int64_t n) override {
    if (all()) return target_.gelu_forward(dt, x, y, dydx, n);
    Backend::gelu_forward(dt, x, y, dydx, n);
  }
  void gemm_group(DType dt, const std::vector<GemmCall>& calls) override {
    if (all()) return target_.gemm_group(dt, calls);
    Backend::gemm_group(dt, calls);
  }
  void softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log) override {
    if (all()) return target_.softmax_rows(dt, x, y, rows, cols, log);
    Backend::softmax_rows(dt, x, y, rows, cols, log);
  }
  void softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx, int64_t rows, int64_t cols,
                             bool log) override {
    if (all()) return target_.softmax_backward_rows(dt, y, dy, dx, rows, cols, log);
    Backend::softmax_backward_rows(dt, y, dy, dx, rows, cols, log);
  }
  void cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                   bool reverse) override {
    if (all()) return target_.cumsum_rows(dt, x, y, rows, cols, exclusive, reverse);
    Backend::cumsum_rows(dt, x, y, rows, cols, exclusive, reverse);
  }
  void causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                   double value) override {
    if (all()) return target_.causal_mask(dt, x, y, batch, t_q, t_k, value);
    Backend::causal_mask(dt, x, y, batch, t_q, t_k, value);
  }
  void layernorm_forward(DType dt, const void* x, const void* weight, const void* bias, void* y, void* mean,
                         void* rstd, int64_t rows, int64_t cols, double eps) override {
    if (all()) return target_.layernorm_forward(dt, x, weight, bias, y, mean, rstd, rows, cols, eps);
    Backend::layernorm_forward(dt, x, weight, bias, y, mean, rstd, rows, cols, eps);
  }
  void layernorm_backward(DType dt, const void* dy, const void* x, const void* weight, const void* mean,
                          const void* rstd, void* dx, void* dweight, void* dbias, int64_t rows,
                          int64_t cols) override {
    if (all()) return target_.layernorm_backward(dt, dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols);
    Backend::layernorm_backward(dt, dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols);
  }
  void rmsnorm_forward(DType dt, const void* x, const void* weight, void* y, void* rstd, int64_t rows,
                       int64_t cols, double eps) override {
    if (all()) return target_.rmsnorm_forward(dt, x, weight, y, rstd, rows, cols, eps);
    Backend::rmsnorm_forward(dt, x, weight, y, rstd, rows, cols, eps);
  }
  void rmsnorm_backward(DType dt, const void* dy, const void* x, const void* weight, const void* rstd, void* dx,
                        void* dweight, int64_t rows, int64_t cols) override {
    if (all()) return target_.rmsnorm_backward(dt, dy, x, weight, rstd, dx, dweight, rows, cols);
    Backend::rmsnorm_backward(dt, dy, x, weight, rstd, dx, dweight, rows, cols);
  }
  void embedding_forward(DType dt, const void* weight, const int64_t* ids, void* out, int64_t n,
                         int64_t dim) override {
    if (all()) return target_.embedding_forward(dt, weight, ids, out, n, dim);
    Backend::embedding_forward(dt, weight, ids, out, n, dim);
  }
  void embedding_backward(DType dt, const void* dout, const int64_t* ids, void* dweight, int64_t n,
                          int64_t dim) override {
    if (all()) return target_.embedding_backward(dt, dout, ids, dweight, n, dim);
    Backend::embedding_backward(dt, dout, ids, dweight, n, dim);
  }
  void cross_entropy_forward(DType dt, const void* logits, const int64_t* targets, void* loss, void* lse,
                             int64_t rows, int64_t cols, int64_t ignore_index) override {
    if (all()) return target_.cross_entropy_forward(dt, logits, targets, loss, lse, rows, cols, ignore_index);
    Backend::cross_entropy_forward(dt, logits, targets, loss, lse, rows, cols, ignore_index);
  }
  void cross_entropy_backward(DType dt, const void* logits, const int64_t* targets, const void* lse, void* dlogits,
                              int64_t rows, int64_t cols, int64_t ignore_index, double scale) override {
    if (all())
      return target_.cross_entropy_backward(dt, logits, targets, lse, dlogits, rows, cols, ignore_index, scale);
    Backend::cross_entropy_backward(dt, logits, targets, lse, dlogits, rows, cols, ignore_index, scale);
  }

  // ---- attention and positions ------------------------------------------------------------
  void attention_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v, void* y,
                         void* attn, void* p, void* r) override {
    if (all()) return target_.attention_forward(dt, args, q, k, v, y, attn, p, r);
    Backend::attention_forward(dt, args, q, k, v, y, attn, p, r);
  }
  void attention_backward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                          const void* attn, const void* p, const void* dy, void* dq, void* dk, void* dv) override {
    if (all()) return target_.attention_backward(dt, args, q, k, v, attn, p, dy, dq, dk, dv);
    Backend::attention_backward(dt, args, q, k, v, attn, p, dy, dq, dk, dv);
  }  void attention_blockwise_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                                   void* y, void* lse, void* runway_lse) override {
    if (all()) return target_.attention_blockwise_forward(dt, args, q, k, v, y, lse, runway_lse);
    Backend::attention_blockwise_forward(dt, args, q, k, v, y, lse, runway_lse);
  }
  void attention_blockwise_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                    const void* v, const void* y, const void* lse, const void* runway_lse,
                                    const void* dy, void* dq, void* dk, void* dv) override {
    if (all()) return target_.attention_blockwise_backward(dt, args, q, k, v, y, lse, runway_lse, dy, dq, dk, dv);
    Backend::attention_blockwise_backward(dt, args, q, k, v, y, lse, runway_lse, dy, dq, dk, dv);
  }

  // No default yet: always the target's.
  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override {
    target_.rope(dt, x, y, rows, seq, dim, base, position_offset, inverse);
  }
  void qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base) override {
    if (all()) return target_.qkv_to_heads(dt, qkv, heads, batch, seq, n_heads, head_dim, rope_base);
    Backend::qkv_to_heads(dt, qkv, heads, batch, seq, n_heads, head_dim, rope_base);
  }
  void heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base) override {
    if (all()) return target_.heads_to_qkv(dt, dheads, dqkv, batch, seq, n_heads, head_dim, rope_base);
    Backend::heads_to_qkv(dt, dheads, dqkv, batch, seq, n_heads, head_dim, rope_base);
  }

 private:
  bool all() const { return forward_ == Forward::All; }

  Backend& target_;
  Device device_;
  std::string name_;
  Forward forward_;
};

}  // namespace runway::testing
