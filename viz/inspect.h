// `runway inspect`: one text through a model, every layer's attention maps as pictures
// (PNG heatmaps) and arrays (.npy), the runway-cascade diagnostics (nn/cascade.h), and
// an index.html that shows all of it offline.
//
// Files written into the output folder (l = layer, h = head):
//   L{l}_H{h}_A.png/.npy      A_h  = softmax(S_h), the un-rewired attention
//   L{l}_P.png/.npy           P    = the runway head's probabilities
//   L{l}_R.png/.npy           R    = runway coefficients (for a standard layer: what the
//                                    runway head would measure; not applied)
//   L{l}_H{h}_Arew.png/.npy   A'_h = the rewired attention (rewired layers only)
//   L{l}_H{h}_diff.png/.npy   A'_h - A_h (rewired layers only)
//   cascade.svg, cascade.json the cascade diagnostics (runway share by distance, per layer)
//   inspect.json              the text, tokens, model summary, file list, cascade numbers
//   index.html
// Arrays are float32 (T, T) for batch row 0 (the one text).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/attention.h"
#include "nn/cascade.h"
#include "nn/gpt.h"

namespace runway::viz {

struct InspectOptions {
  std::string title;       // shown on the page (e.g. the checkpoint folder)
  bool write_npy = true;
  bool write_html = true;
};

struct InspectResult {
  nn::CascadeReport cascade;
  nlohmann::json summary;  // what inspect.json holds
};

// Runs `bytes` (1..max length) through `model` and writes the folder `out_dir`
// (created if missing). Errors: empty text, or longer than the model can take (learned
// positions: seq_len).
InspectResult inspect_model(const nn::GPT& model, const std::vector<uint8_t>& bytes, const std::string& out_dir,
                            const InspectOptions& options = {});

// R from P (row-major (T, T), causal) by the spec's two summaries:
//   absorption R[i,j] = sum_{j<k<i} P[k,j];  two_hop R[i,j] = sum_{j<k<i} P[i,k] P[k,j].
std::vector<double> runway_coefficients_from(const std::vector<double>& p, int64_t T, RunwaySummary summary);

// Chart of each layer's runway share by distance, runway_l(d) / (direct_l(d) + runway_l(d)).
std::string cascade_chart_svg(const nn::CascadeReport& report, const std::string& title);

// Writes text to a file atomically.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace runway::viz
