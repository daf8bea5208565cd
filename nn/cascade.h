// Runway-cascade diagnostics: how much of token j's influence on token i, at each
// layer, arrives by the direct attention path and how much through the runway (the
// tokens k strictly between j and i). The definition (docs/cascade.md):
//
//   Abar_l    (T, T)  the attention the layer actually uses (A' where rewired, A
//                     otherwise), averaged over heads; row-stochastic and causal.
//   C_0 = I           attention rollout (Abnar & Zuidema 2020): C_l = 1/2 (I + Abar_l) C_{l-1},
//                     the residual stream counted as half of each layer's mixing.
//   For j < i, layer l splits the attention half of C_l[i,j] into
//     direct_l[i,j] = 1/2 Abar_l[i,j] C_{l-1}[j,j]                 (i reads j itself)
//     runway_l[i,j] = 1/2 sum_{j<k<i} Abar_l[i,k] C_{l-1}[k,j]     (i reads k, which carries j)
//     self_l[i,j]   = 1/2 Abar_l[i,i] C_{l-1}[i,j]                 (i reads its own stream)
//   (terms k < j vanish: C_{l-1} is causal).
//   Per distance d = i - j: the mean of direct_l and of runway_l over the T - d pairs.
//   One number per layer, the runway share:
//     rho_l = sum_{i-j>=2} runway_l[i,j] / sum_{i-j>=2} (direct_l[i,j] + runway_l[i,j])
//   (0 when the denominator is 0; distance 1 is left out because its runway is empty).
//
// The first layer's runway terms are 0 by construction (C_0 = I: no token has mixed yet);
// a cascade builds up through depth, which is what these numbers follow.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace runway::nn {

struct CascadeLayer {
  std::vector<double> direct_by_distance;  // [d] mean direct_l over pairs at distance d (d = 0..T-1; d = 0 is 0)
  std::vector<double> runway_by_distance;  // [d] mean runway_l likewise
  double direct_total = 0;                 // sum of direct_l over pairs with i - j >= 2
  double runway_total = 0;                 // sum of runway_l over pairs with i - j >= 2
  double runway_share = 0;                 // rho_l
  std::vector<double> rollout;             // C_l, row-major (T, T)
};

struct CascadeReport {
  int64_t T = 0;
  std::vector<CascadeLayer> layers;
};

// head_mean_attention[l]: Abar_l, row-major (T, T). Errors (naming the layer and the
// entry) when a matrix has the wrong size, is not causal (a nonzero above the diagonal),
// has a negative or non-finite entry, or a row not summing to 1 within 1e-4 (float32 rounding).
CascadeReport runway_cascade(const std::vector<std::vector<double>>& head_mean_attention, int64_t T);

// The mean over heads of attention (B, H, T, T) for batch row b, as float64 row-major (T, T).
std::vector<double> mean_over_heads(const Tensor& attention, int64_t b);
// The same from attention's values already on the host (row-major (B, H, T, T)).
std::vector<double> mean_over_heads(const std::vector<double>& attention, int64_t heads, int64_t T, int64_t b);

nlohmann::json to_json(const CascadeReport& report);  // without the rollout matrices

}  // namespace runway::nn
