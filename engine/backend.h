// The backend interface: memory and raw kernels for one device.
//
// The differentiable ops (engine/ops.cpp) decide *what* to compute and how the
// gradient flows; a Backend only computes, on contiguous buffers whose element type
// is given by a DType. The CPU backend lives in engine/cpu_backend.cpp; cuda/
// implements the same interface. Every kernel is written for row-major data.
//
// Conventions: `rows x cols` kernels work on the last dimension (cols) of a
// contiguous buffer with `rows` = numel / cols. Pointers are device pointers of the
// backend's device. Index buffers (targets, embedding ids) are int64.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace runway {

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Tanh, Sigmoid, Relu, Gelu,
  ReluGrad,   // 1 where x > 0, else 0: relu'(x)
  GeluGrad,   // d/dx gelu_tanh(x)
  AddScalar,  // x + param
  MulScalar,  // x * param
  PowScalar,  // x ^ param
};

enum class BinaryOp { Add, Sub, Mul, Div, Pow, Equal };

// Describes an elementwise op between two broadcast inputs: per-input strides (in
// elements, from each input's first element; any view's strides work) aligned to
// the output shape, with stride 0 on broadcast dims.
struct BroadcastPlan {
  Shape out_shape;
  Shape a_strides;
  Shape b_strides;
};

// A strided read of a buffer: element [i0,...,in] is at base[offset + sum ik*strides[k]].
struct StridedView {
  const void* base = nullptr;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
};

// Causal attention over (B, H, T, D) buffers, standard or runway-rewired
// (../shared/spec/RUNWAY.md). See engine/ops/attention.h for the math and names.
struct AttentionArgs {
  int64_t batch = 0, heads = 0, seq = 0, head_dim = 0;
  double scale = 1.0;                // logits are (q . k) * scale
  std::vector<double> alibi_slopes;  // empty, or one per head: logits -= slope_h * (i - j)
  bool rewired = false;              // false: standard attention; the fields below are unused
  int64_t runway_head = 0;
  bool two_hop = false;              // runway summary: absorption (false) or two_hop (true)
  double beta = 1.0;
  bool detach = false;               // backward treats R as a constant
};

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;       // C (m x n) = op(A) (m x k) * op(B) (k x n)
  int64_t lda = 0, ldb = 0, ldc = 0;  // leading dims of the stored matrices
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // between batch items (0 = shared)
  int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;     // C = alpha op(A) op(B) + beta C
  // When set: C = row_init (an n-vector broadcast over the rows of every batch item)
  // + alpha op(A) op(B), and beta is ignored (a linear layer's bias, without a separate
  // pass). C must then be contiguous: ldc = n and stride_c = m n.
  const void* row_init = nullptr;
};

// Throws unless C meets row_init's requirement (a no-op without row_init).
void check_row_init(const GemmArgs& g);

// The arguments of `batch` contiguous row-major products C (m x n) = alpha op(A) op(B) + beta C,
// with A stored m x k (k x m when trans_a) and B k x n (n x k when trans_b), one after another.
GemmArgs contiguous_gemm_args(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t batch = 1,
                              double alpha = 1.0, double beta = 0.0);

// One product of a group: C = op(A) op(B) as described by args.
struct GemmCall {
  GemmArgs args;
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The fused kernels registered by name (engine/fused_kernel.h) that a call on this
  // backend runs: those registered for kernel_device(), or, when has_fused_kernels() is
  // false, every kernel's default composed from the primitives below. A backend that
  // serves a device with another's kernels (engine/testing/delegating_backend.h) says so.
  virtual Device kernel_device() const { return device(); }
  virtual bool has_fused_kernels() const { return true; }

  // ---- memory ---------------------------------------------------------------
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t nbytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t nbytes) = 0;
  virtual void copy_within(void* dst, const void* src, size_t nbytes) = 0;
  virtual void synchronize() {}

  // ---- layout -----------------------------------------------------------------
  virtual void fill(DType dt, void* dst, int64_t n, double value) = 0;
  // Gathers a strided view into a contiguous buffer of shape view.shape.
  virtual void strided_copy(DType dt, const StridedView& src, void* dst) = 0;
  // Element type conversion between contiguous buffers of n elements.
  virtual void cast(DType from, const void* src, DType to, void* dst, int64_t n) = 0;

  // ---- elementwise ------------------------------------------------------------
  virtual void unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) = 0;
  virtual void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a,
                      const void* b, void* out) = 0;

  // ---- linear algebra -----------------------------------------------------------
  virtual void gemm(DType dt, const GemmArgs& args, const void* a, const void* b, void* c) = 0;

  // ---- row reductions (last dimension) ------------------------------------------
  virtual void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) = 0;
  virtual void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) = 0;

  // ---- fused kernels ----------------------------------------------------------------
  // A fused kernel (layernorm's forward, cross-entropy's backward, ...) is not a virtual
  // here: it is a FusedKernel object in its op family's file (engine/fused_kernel.h) with
  // a default composed from the primitives above (memory, layout, elementwise, gemm, row
  // reductions), so a backend that implements only the primitives runs every op, and each
  // device's faster implementation registered by name (the CPU's from the family file, the
  // CUDA's from cuda/ops/<family>.cu). Adding one touches no backend class. The defaults
  // take scratch through allocate/deallocate, and may copy small per-row values (ids,
  // targets, row maxima) to the host. tests/test_backend_defaults.cpp holds every default
  // equal to the CPU implementation.
  //
  // The members below are non-virtual shorthands for six of them, which attention's
  // defaults (engine/ops/attention.cpp) and its rewired projection call on a Backend:
  // each runs the kernel as its op does (softmax_rows_kernel(*this, ...)).

  // Row kernels over the last dimension (engine/ops/softmax.cpp, engine/ops/reduce.cpp).
  void softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log);
  // dx = y * (dy - sum(dy*y)) for softmax; dx = dy - exp(y) * sum(dy) for log_softmax,
  // where y is the forward output.
  void softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx, int64_t rows, int64_t cols,
                             bool log);
  void cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive, bool reverse);
  // Over the last two dims (t_q x t_k) of `batch` matrices: entries with
  // j > i + (t_k - t_q) are set to `value`, the rest copied.
  void causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k, double value);
  // The packed projection qkv (B, T, 3, H, D) laid out head-major as heads
  // (3, B, H, T, D), with q and k (parts 0, 1) rotated by RoPE when rope_base > 0
  // (engine/ops/rope.cpp). The default gathers, then rotates in place; the CPU does both
  // in one pass.
  void qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base);
  // Its adjoint: dheads (3, B, H, T, D), with dq, dk rotated back, into dqkv (B, T, 3, H, D).
  // dheads may be overwritten (the default rotates it in place, then scatters).
  void heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base);

  // ---- attention and positions ------------------------------------------------------
  // The four attention kernels are fused kernels too (engine/fused_kernel.h): defined with
  // their defaults in engine/ops/attention.cpp and engine/ops/attention_cpu_blockwise.cpp,
  // the CPU's implementations beside them, CUDA's registered from cuda/ops/attention*.cu.
  // These members are shorthands that run them on this backend.
  //
  // Forward: writes y (B,H,T,D) and saves attn (B,H,T,T), the attention applied to V
  // (A for standard, A' for rewired); rewired also saves p and r (B,T,T), the runway
  // head probabilities and the runway coefficients. Entries above the diagonal are 0.
  // The default composes the primitives above (gemm, causal_mask, softmax_rows,
  // cumsum_rows, binary, ...; engine/ops/attention.cpp), so a backend that implements
  // only the primitives runs attention; the CPU and CUDA backends fuse it.
  void attention_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v, void* y,
                         void* attn, void* p, void* r);
  // Backward from dy (B,H,T,D), using q, k, v and the saved attn (and p when rewired; R's
  // value is not needed: each summary is linear or bilinear in P); writes (overwrites)
  // dq, dk, dv. The default composes the primitives, like the forward's.
  void attention_backward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                          const void* attn, const void* p, const void* dy, void* dq, void* dk, void* dv);
  // Blockwise (memory-linear) attention (engine/ops/attention_cpu_blockwise.cpp): the same y
  // as attention_forward, but no (T x T) map is saved. Saves lse (B,H,T), the log-sum-exp
  // of every row of S'_h (S_h when standard), and, rewired, runway_lse (B,T), that of the
  // runway head's un-rewired rows S_r, and runway_acc (B,T), always float64: absorption's
  // decoding state after the last row, acc[j] = sum_{k>j} P[k,j], from which the backward
  // walks back block by block (a backend whose backward rebuilds it otherwise writes 0).
  // The backward recomputes the maps block by block from them and the forward's output y.
  // The default runs attention_forward/backward with the maps in scratch for the duration
  // of the call (same numbers, no memory saving; it leaves lse, runway_lse and runway_acc
  // at 0, which its backward does not read).
  void attention_blockwise_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                                   void* y, void* lse, void* runway_lse, void* runway_acc);
  // Writes (overwrites) dq, dk, dv from dy (B,H,T,D) and what the forward saved.
  void attention_blockwise_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                    const void* v, const void* y, const void* lse, const void* runway_lse,
                                    const void* runway_acc, const void* dy, void* dq, void* dk, void* dv);
  // Rotary position embedding over `rows` sequences of `seq` positions of width `dim`
  // (even), "rotate-half" convention: pairs (x[c], x[c + dim/2]) at position t are
  // rotated by angle (t + position_offset) * base^(-2c/dim); inverse rotates back.
  virtual void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim,
                    double base, int64_t position_offset, bool inverse) = 0;
};

// The backend for a device. CPU is always present; CUDA once registered by cuda/
// (see load_backends below). Throws a clear Error otherwise.
Backend& backend_for(Device device);
void register_backend(Backend* backend);
// Records why a device has no backend, so backend_for can say so.
void note_backend_unavailable(Device device, const std::string& reason);
bool backend_available(Device device);

// Registers every backend this build has (cuda/ when built with CUDA and a device
// is visible). Defined in cuda/register_cuda.cpp or engine/no_cuda.cpp; apps and
// tests call it once at start. Safe to call more than once.
void load_backends();

}  // namespace runway
