#include "nn/cascade.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/dtype.h"

namespace runway::nn {

CascadeReport runway_cascade(const std::vector<std::vector<double>>& head_mean_attention, int64_t T) {
  if (T < 1) throw Error(fmt::format("runway_cascade: T must be >= 1, got {}", T));
  const size_t n = static_cast<size_t>(T);
  for (size_t l = 0; l < head_mean_attention.size(); ++l) {
    const std::vector<double>& a = head_mean_attention[l];
    if (a.size() != n * n)
      throw Error(fmt::format("runway_cascade: layer {} has {} entries, a ({}, {}) matrix needs {}", l, a.size(), T, T,
                              n * n));
    for (size_t i = 0; i < n; ++i) {
      double row = 0;
      for (size_t j = 0; j < n; ++j) {
        const double v = a[i * n + j];
        if (!std::isfinite(v) || v < 0)
          throw Error(fmt::format("runway_cascade: layer {} entry ({}, {}) is {}, attention must be finite and >= 0", l,
                                  i, j, v));
        if (j > i && v != 0)
          throw Error(fmt::format("runway_cascade: layer {} entry ({}, {}) is {}, attention must be causal (0 for j > i)",
                                  l, i, j, v));
        row += v;
      }
      // 1e-4: float32 softmax rows sum to 1 only to rounding (T terms of relative error ~6e-8).
      if (std::abs(row - 1) > 1e-4)
        throw Error(fmt::format("runway_cascade: layer {} row {} sums to {}, attention rows must sum to 1", l, i, row));
    }
  }

  CascadeReport report;
  report.T = T;
  std::vector<double> prev(n * n, 0.0);  // C_{l-1}, starting at the identity
  for (size_t i = 0; i < n; ++i) prev[i * n + i] = 1;
  for (const std::vector<double>& a : head_mean_attention) {
    CascadeLayer layer;
    layer.direct_by_distance.assign(n, 0.0);
    layer.runway_by_distance.assign(n, 0.0);
    layer.rollout.assign(n * n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      // C_l[i, :] = 1/2 C_{l-1}[i, :] + 1/2 sum_k Abar[i,k] C_{l-1}[k, :]
      for (size_t k = 0; k <= i; ++k) {
        const double w = 0.5 * a[i * n + k];
        if (w == 0) continue;
        for (size_t j = 0; j <= k; ++j) layer.rollout[i * n + j] += w * prev[k * n + j];
      }
      for (size_t j = 0; j <= i; ++j) layer.rollout[i * n + j] += 0.5 * prev[i * n + j];
      for (size_t j = 0; j < i; ++j) {
        const double direct = 0.5 * a[i * n + j] * prev[j * n + j];
        double runway = 0;
        for (size_t k = j + 1; k < i; ++k) runway += a[i * n + k] * prev[k * n + j];
        runway *= 0.5;
        const size_t d = i - j;
        layer.direct_by_distance[d] += direct;
        layer.runway_by_distance[d] += runway;
        if (d >= 2) layer.direct_total += direct, layer.runway_total += runway;
      }
    }
    for (size_t d = 1; d < n; ++d) {
      layer.direct_by_distance[d] /= static_cast<double>(n - d);
      layer.runway_by_distance[d] /= static_cast<double>(n - d);
    }
    const double denom = layer.direct_total + layer.runway_total;
    layer.runway_share = denom > 0 ? layer.runway_total / denom : 0.0;
    prev = layer.rollout;
    report.layers.push_back(std::move(layer));
  }
  return report;
}

std::vector<double> mean_over_heads(const Tensor& attention, int64_t b) {
  const Shape& s = attention.shape();
  if (s.size() != 4 || s[2] != s[3])
    throw Error(fmt::format("mean_over_heads: attention must be (B, H, T, T), got {}", attention.shape_str()));
  if (b < 0 || b >= s[0]) throw Error(fmt::format("mean_over_heads: batch row {} outside 0..{}", b, s[0] - 1));
  return mean_over_heads(attention.to_vector(), s[1], s[2], b);
}

std::vector<double> mean_over_heads(const std::vector<double>& all, int64_t H, int64_t T, int64_t b) {
  if (H < 1 || T < 1 || b < 0 || static_cast<int64_t>(all.size()) < (b + 1) * H * T * T)
    throw Error(fmt::format("mean_over_heads: {} values hold no batch row {} of (H={}, T={}, T) maps", all.size(), b,
                            H, T));
  std::vector<double> mean(static_cast<size_t>(T * T), 0.0);
  for (int64_t h = 0; h < H; ++h) {
    const double* src = &all[static_cast<size_t>((b * H + h) * T * T)];
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += src[i] / static_cast<double>(H);
  }
  return mean;
}

nlohmann::json to_json(const CascadeReport& report) {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < report.layers.size(); ++l) {
    const CascadeLayer& c = report.layers[l];
    layers.push_back({{"layer", l},
                      {"runway_share", c.runway_share},
                      {"direct_total", c.direct_total},
                      {"runway_total", c.runway_total},
                      {"direct_by_distance", c.direct_by_distance},
                      {"runway_by_distance", c.runway_by_distance}});
  }
  return {{"T", report.T}, {"layers", layers}};
}

}  // namespace runway::nn
