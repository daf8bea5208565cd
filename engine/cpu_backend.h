// The CPU implementation of runway::Backend (engine/backend.h): plain loops (OpenMP
// over rows where it pays) and OpenBLAS gemm. Every kernel is templated on the element
// type and instantiated for float and double (engine/cpu_kernels.h's dispatch_float).
//
// Declarations only. Memory and the backend registry are defined in
// engine/cpu_backend.cpp; each kernel is defined beside the op it serves, in its op
// family's file under engine/ops/ (see docs/architecture.md for the map).
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
  // The engine threads gemm itself (see gemm_group): OpenBLAS stays in the calling thread.
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
  void gelu_forward(DType dt, const void* x, void* y, void* dydx, int64_t n) override;
  void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b,
              void* out) override;

  // ---- linear algebra -----------------------------------------------------------
  void gemm(DType dt, const GemmArgs& args, const void* a, const void* b, void* c) override;
  void gemm_group(DType dt, const std::vector<GemmCall>& calls) override;

  // ---- row kernels ----------------------------------------------------------------
  void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;
  void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;
  void softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols,
                    bool log) override;
  void softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx, int64_t rows,
                             int64_t cols, bool log) override;
  void cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                   bool reverse) override;
  void causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                   double value) override;

  // ---- fused layers ---------------------------------------------------------------
  void layernorm_forward(DType dt, const void* x, const void* weight, const void* bias, void* y,
                         void* mean, void* rstd, int64_t rows, int64_t cols,
                         double eps) override;
  void layernorm_backward(DType dt, const void* dy, const void* x, const void* weight,
                          const void* mean, const void* rstd, void* dx, void* dweight,
                          void* dbias, int64_t rows, int64_t cols) override;
  void rmsnorm_forward(DType dt, const void* x, const void* weight, void* y, void* rstd, int64_t rows,
                       int64_t cols, double eps) override;
  void rmsnorm_backward(DType dt, const void* dy, const void* x, const void* weight, const void* rstd, void* dx,
                        void* dweight, int64_t rows, int64_t cols) override;
  void embedding_forward(DType dt, const void* weight, const int64_t* ids, void* out, int64_t n,
                         int64_t dim) override;
  void embedding_backward(DType dt, const void* dout, const int64_t* ids, void* dweight,
                          int64_t n, int64_t dim) override;
  void cross_entropy_forward(DType dt, const void* logits, const int64_t* targets, void* loss,
                             void* lse, int64_t rows, int64_t cols,
                             int64_t ignore_index) override;
  void cross_entropy_backward(DType dt, const void* logits, const int64_t* targets,
                              const void* lse, void* dlogits, int64_t rows, int64_t cols,
                              int64_t ignore_index, double scale) override;

  // ---- attention and positions ------------------------------------------------------
  void attention_forward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                         const void* v, void* y, void* attn, void* p, void* r) override;
  void attention_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                          const void* v, const void* attn, const void* p, const void* dy,
                          void* dq, void* dk, void* dv) override;
  void attention_blockwise_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                                   void* y, void* lse, void* runway_lse) override;
  void attention_blockwise_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                    const void* v, const void* y, const void* lse, const void* runway_lse,
                                    const void* dy, void* dq, void* dk, void* dv) override;
  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override;
  void qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t batch, int64_t seq,
                    int64_t n_heads, int64_t head_dim, double rope_base) override;
  void heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t batch, int64_t seq,
                    int64_t n_heads, int64_t head_dim, double rope_base) override;

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
