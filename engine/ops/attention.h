// Causal attention, standard and runway-rewired (../shared/spec/RUNWAY.md): ONE entry
// point, causal_attention(inputs, options, sink), which training, cached decoding,
// inspection, the CLI, the benchmarks and the gradcheck rows all call.
//
// Shapes: q, k, v, y are (B, H, T, D). Per head h, with scale = 1/sqrt(D):
//   S_h[i,j]  = (q_h[i] . k_h[j]) * scale  - alibi_h * (i - j)      (j <= i; else -inf)
//   A_h       = softmax_j(S_h)                       standard: y_h = A_h v_h
//   P         = A_r, r = runway_head                 (B, T, T)
//   R[i,j]    = sum_{j<k<i} P[k,j]                   absorption
//             = sum_{j<k<i} P[i,k] P[k,j]            two_hop        (B, T, T)
//   S'_h      = S_h - beta * R,  A'_h = softmax_j(S'_h),  y_h = A'_h v_h
// docs/attention.md derives every backward step with the same names. The fused op and
// its backward are in engine/ops/attention.cpp, the tuned CPU kernels in
// engine/ops/attention_cpu_fast.cpp, the CUDA kernels in cuda/ops/attention.cu.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ops/rope.h"  // rope(), applied by causal_attention when asked
#include "engine/tensor.h"

namespace runway {

enum class RunwaySummary { Absorption, TwoHop };

// Parses "absorption" / "two_hop"; throws an Error listing the allowed names.
RunwaySummary parse_runway_summary(const std::string& name);
const char* runway_summary_name(RunwaySummary s);

struct RunwayOptions {
  int64_t runway_head = 0;
  RunwaySummary summary = RunwaySummary::Absorption;
  double beta = 1.0;
  bool detach = false;  // treat R as a constant in the backward (ablation)
};

// What the forward computed, for inspection (all detached). A rewired attention fills
// all four; a standard one fills a and a_rewired (both A: nothing is rewired) and leaves
// p and r undefined. Rows are the queries, columns the keys (t_q x t_k).
struct AttentionSink {
  Tensor p;          // (B, t_q, t_k) runway head probabilities
  Tensor r;          // (B, t_q, t_k) runway coefficients
  Tensor a;          // (B, H, t_q, t_k) un-rewired attention softmax(S_h)
  Tensor a_rewired;  // (B, H, t_q, t_k) the attention applied to v: A'_h (A_h when standard)
};

// One layer's state for cached decoding: the keys and values of the positions seen so
// far and, for a rewired layer, the runway state of the spec's "Incremental decoding".
struct AttentionCache {
  Tensor k, v;          // (B, H, t, D); k after RoPE
  Tensor runway_state;  // absorption: acc (B, 1, 1, t); two_hop: strictly-lower P rows (B, 1, t, t)
  int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

// The attention's inputs: split q, k, v (B, H, T, D), or the packed projection
// qkv (B, T, 3C) (q, k, v side by side, C = heads * D each, head-major inside).
// With a cache, the inputs are the NEW positions only: their k, v are appended to the
// cache and their queries attend to every cached position.
struct AttentionInputs {
  Tensor q, k, v;
  Tensor qkv;
  int64_t heads = 0;                // packed only
  AttentionCache* cache = nullptr;  // cached decoding

  static AttentionInputs split(const Tensor& q, const Tensor& k, const Tensor& v) {
    AttentionInputs in;
    in.q = q;
    in.k = k;
    in.v = v;
    return in;
  }
  static AttentionInputs packed(const Tensor& qkv, int64_t heads, AttentionCache* cache = nullptr) {
    AttentionInputs in;
    in.qkv = qkv;
    in.heads = heads;
    in.cache = cache;
    return in;
  }
};

// Which kernels the fused path runs. Materialized keeps the (B,H,T,T) softmax (and P, R)
// for the backward; Blockwise keeps only per-row statistics, O(B H T) (docs/attention.md,
// "Blockwise attention"; engine/ops/attention_cpu_blockwise.cpp). Both compute the same
// numbers. Auto picks blockwise from blockwise_auto_from() positions on. Whenever the maps are
// asked for (a sink: `runway inspect`, the plots), the materialised kernels run.
enum class AttentionImpl { Auto, Materialized, Blockwise };
AttentionImpl parse_attention_impl(const std::string& name);  // "auto" / "materialized" / "blockwise"
const char* attention_impl_name(AttentionImpl impl);
// Measured (docs/performance.md, "Blockwise attention"): from here on blockwise is faster
// than materialised on the CPU, standard or absorption, one batch item or several, and
// its memory is far smaller.
constexpr int64_t kBlockwiseAutoFrom = 1024;
// The length from which Auto runs blockwise: kBlockwiseAutoFrom, except for two_hop on a
// single sequence, where never (its blockwise backward materialises one batch item's maps,
// so with one item it saves no memory and was 1.04-1.24x slower).
int64_t blockwise_auto_from(bool rewired, const RunwayOptions& runway, int64_t batch);

// How to attend. The defaults are plain causal attention: no RoPE, no ALiBi, not rewired.
struct AttentionOptions {
  double rope_base = 0.0;       // RoPE on q and k (rotate-half) with this base; 0 = none
  int64_t position_offset = 0;  // position of the first query (with a cache: the cache's length)
  bool alibi = false;           // ALiBi bias, slopes alibi_slopes(H)
  bool rewired = false;         // runway-rewired with `runway`; standard when false
  RunwayOptions runway;
  // Computes the same thing from primitive ops (matmul, causal_mask, softmax, cumsum, ...),
  // the gradients coming from the tape: the fused op's twin, to check it a second way.
  bool composed = false;
  AttentionImpl impl = AttentionImpl::Auto;  // fused path only

  static AttentionOptions standard() { return {}; }
  static AttentionOptions rewired_with(const RunwayOptions& runway) {
    AttentionOptions o;
    o.rewired = true;
    o.runway = runway;
    return o;
  }
  AttentionOptions with_alibi(bool on = true) const {
    AttentionOptions o = *this;
    o.alibi = on;
    return o;
  }
  AttentionOptions with_rope(double base, int64_t offset = 0) const {
    AttentionOptions o = *this;
    o.rope_base = base;
    o.position_offset = offset;
    return o;
  }
  AttentionOptions with_impl(AttentionImpl i) const {
    AttentionOptions o = *this;
    o.impl = i;
    return o;
  }
  AttentionOptions composed_from_primitives() const {
    AttentionOptions o = *this;
    o.composed = true;
    return o;
  }
};

// Causal attention. Split inputs give y (B, H, T, D); packed inputs give (B, T, C), the
// heads side by side. Paths, all computing the formulas above:
//   * split, fused: rope() on q and k when asked, then one fused op ("attention" or
//     "rewired_attention" on the tape) through Backend::attention_forward/backward;
//   * packed, fused: one op ("qkv_attention") from the projection to the merged heads,
//     RoPE inside the layout kernels; its backward writes the packed gradient directly
//     (no zero-padded split gradients, no permute copies);
//   * composed (options.composed) or cached (inputs.cache): primitive ops on the tape.
//     Cached decoding appends to the cache; a rewired layer then takes one new position
//     per call (the runway state advances by one row).
// The sink, when given, receives P, R, A and A'; for the fused rewired op, A costs one
// extra standard forward, which is why it is only computed on request.
Tensor causal_attention(const AttentionInputs& inputs, const AttentionOptions& options,
                        AttentionSink* sink = nullptr);

// ALiBi slopes for H heads: 2^(-8 (h+1) / H) (Press et al., for H a power of two; the
// same geometric rule otherwise). The only place slopes are made: the kernels get them
// in AttentionArgs, the composed path adds alibi_bias.
std::vector<double> alibi_slopes(int64_t heads);

// The plain loop-level CPU reference of the attention kernels: the spec's forward and
// backward written as loops over (b, h, i, j), float64, with the interface of
// Backend::attention_forward / attention_backward on host buffers (p, r may be null for
// standard attention). Slow (O(B H T^2 D), O(B T^3) for two_hop); the tuned kernels in
// engine/ops/attention_cpu_fast.cpp are held equal to it (tests/test_attention.cpp,
// tests/test_threaded_kernels.cpp).
struct AttentionArgs;
namespace reference {
void attention_forward(const AttentionArgs& args, const double* q, const double* k, const double* v, double* y,
                       double* attn, double* p, double* r);
void attention_backward(const AttentionArgs& args, const double* q, const double* k, const double* v,
                        const double* attn, const double* p, const double* dy, double* dq, double* dk, double* dv);
}  // namespace reference


}  // namespace runway
