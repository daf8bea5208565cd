// Causal attention, standard and runway-rewired (../shared/spec/RUNWAY.md), as fused
// differentiable ops with handwritten backwards, their composite twins written with
// primitive ops, and the positional encodings (RoPE, ALiBi).
//
// Shapes: q, k, v, y are (B, H, T, D). Per head h, with scale = 1/sqrt(D):
//   S_h[i,j]  = (q_h[i] . k_h[j]) * scale  - alibi_h * (i - j)      (j <= i; else -inf)
//   A_h       = softmax_j(S_h)                       standard: y_h = A_h v_h
//   P         = A_r, r = runway_head                 (B, T, T)
//   R[i,j]    = sum_{j<k<i} P[k,j]                   absorption
//             = sum_{j<k<i} P[i,k] P[k,j]            two_hop        (B, T, T)
//   S'_h      = S_h - beta * R,  A'_h = softmax_j(S'_h),  y_h = A'_h v_h
// docs/attention.md derives every backward step with the same names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// What the rewired forward computed, for inspection (all detached).
struct RewiredIntermediates {
  Tensor p;          // (B, T, T) runway head probabilities
  Tensor r;          // (B, T, T) runway coefficients
  Tensor a;          // (B, H, T, T) un-rewired attention softmax(S_h)
  Tensor a_rewired;  // (B, H, T, T) rewired attention A'_h
};

// ALiBi slopes for H heads: 2^(-8 (h+1) / H) (Press et al., for H a power of two;
// the same geometric rule otherwise). Pass them to the attention ops below.
std::vector<double> alibi_slopes(int64_t heads);

// Fused standard causal attention. `alibi` is empty or one slope per head.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const std::vector<double>& alibi = {});

// Fused runway-rewired causal attention. When `inspect` is given, it receives P, R,
// A and A' (P, R and A' are the saved forward buffers; A costs one extra standard
// attention forward, which is why it is only computed on request).
Tensor rewired_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                         const RunwayOptions& options, RewiredIntermediates* inspect = nullptr,
                         const std::vector<double>& alibi = {});

// Causal self-attention straight from a packed projection: qkv (B, T, 3C) holds q, k, v
// side by side (C = heads * D each, head-major inside). RoPE with `rope_base` is applied
// to q and k (rope_base 0: none); standard attention, or rewired with `options` when
// `rewired`. Returns (B, T, C), the heads side by side. The same values as splitting,
// rope(), attention() / rewired_attention() and merging the heads, in one op: its
// backward writes the packed gradient directly, instead of the split's zero-padded
// gradients and the permute copies on the way.
Tensor qkv_attention(const Tensor& qkv, int64_t heads, double rope_base, bool rewired,
                     const RunwayOptions& options, const std::vector<double>& alibi = {});

// The same computations from primitive ops (matmul, causal_mask, softmax, cumsum, ...),
// their gradients coming from the tape. Used to check the fused ops a second way.
Tensor attention_composite(const Tensor& q, const Tensor& k, const Tensor& v,
                           const std::vector<double>& alibi = {});
Tensor rewired_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const RunwayOptions& options,
                                   RewiredIntermediates* inspect = nullptr,
                                   const std::vector<double>& alibi = {});

// Rotary position embedding on (..., T, D), D even; position t + offset.
Tensor rope(const Tensor& x, double base = 10000.0, int64_t position_offset = 0);

}  // namespace runway
