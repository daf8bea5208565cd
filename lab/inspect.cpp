#include "lab/inspect.h"

#include <fmt/format.h>

#include <filesystem>

#include "engine/autograd.h"
#include "nn/cascade.h"

namespace runway::lab {

namespace fs = std::filesystem;

namespace {

// Longer texts make (H, T, T) maps too large to look at and to keep in memory per layer.
constexpr int64_t kMaxInspectLength = 2048;

// The (T, T) block of batch row 0 and head h of a (1, H, T, T) or (1, T, T) map.
std::vector<double> head_block(const std::vector<double>& all, int64_t h, int64_t T) {
  const auto begin = all.begin() + h * T * T;
  return std::vector<double>(begin, begin + T * T);
}

void check_length(const nn::GPTConfig& cfg, int64_t T) {
  const int64_t limit = cfg.pos == nn::PositionEncoding::Learned ? cfg.seq_len : kMaxInspectLength;
  if (T < 1) throw Error("inspect: the text is empty");
  if (T > limit)
    throw Error(fmt::format("inspect: the text is {} bytes, this model can inspect at most {} ({})", T, limit,
                            cfg.pos == nn::PositionEncoding::Learned ? "learned positions: the training length"
                                                                     : "the maps are T x T per head"));
}

// Layer l's maps from its trace. A standard layer has no P or R of its own: P is the
// runway head's row of A and R is recomputed from it (what the head would measure).
viz::LayerMaps layer_maps(const nn::GPTConfig& cfg, int64_t l, const AttentionSink& m, int64_t T) {
  viz::LayerMaps maps;
  maps.rewired = cfg.rewired && cfg.layer_is_rewired(l);
  maps.a = m.a.to_vector();
  maps.a_rewired = maps.rewired ? m.a_rewired.to_vector() : maps.a;
  maps.p = maps.rewired ? head_block(m.p.to_vector(), 0, T) : head_block(maps.a, cfg.runway.runway_head, T);
  maps.r = maps.rewired ? head_block(m.r.to_vector(), 0, T) : runway_coefficients_from(maps.p, T, cfg.runway.summary);
  return maps;
}

}  // namespace

std::vector<double> runway_coefficients_from(const std::vector<double>& p, int64_t T, RunwaySummary summary) {
  if (T < 1 || static_cast<int64_t>(p.size()) != T * T)
    throw Error(fmt::format("runway_coefficients_from: {} values for a ({}, {}) matrix", p.size(), T, T));
  std::vector<double> r(static_cast<size_t>(T * T), 0.0);
  auto P = [&](int64_t i, int64_t j) { return p[static_cast<size_t>(i * T + j)]; };
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j + 1 < i; ++j) {
      double sum = 0;
      for (int64_t k = j + 1; k < i; ++k) sum += summary == RunwaySummary::Absorption ? P(k, j) : P(i, k) * P(k, j);
      r[static_cast<size_t>(i * T + j)] = sum;
    }
  return r;
}

viz::InspectResult inspect_model(const nn::GPT& model, const std::vector<uint8_t>& bytes, const std::string& out_dir,
                                 const viz::InspectOptions& options) {
  const nn::GPTConfig& cfg = model.config;
  const int64_t T = static_cast<int64_t>(bytes.size());
  check_length(cfg, T);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir))
    throw Error(fmt::format("inspect: cannot create the output folder '{}': {}", out_dir, ec.message()));

  std::vector<nn::AttentionTrace> traces;
  {
    NoGradGuard no_grad;
    std::vector<int64_t> ids(bytes.begin(), bytes.end());
    model.forward(Tensor::from_indices(ids, {1, T}).to(model.wte.device()), &traces);
  }

  // One layer's maps at a time: drawn, then only their mean over heads kept.
  viz::InspectFolder folder(out_dir, cfg, bytes, options);
  std::vector<std::vector<double>> used_attention;  // per layer, mean over heads: the cascade's input
  for (size_t l = 0; l < traces.size(); ++l) {
    const viz::LayerMaps maps = layer_maps(cfg, static_cast<int64_t>(l), traces[l].maps, T);
    used_attention.push_back(nn::mean_over_heads(maps.a_rewired, cfg.n_head, T, 0));  // A in a standard layer
    folder.add_layer(static_cast<int64_t>(l), maps);
  }
  return folder.finish(nn::runway_cascade(used_attention, T));
}

}  // namespace runway::lab
