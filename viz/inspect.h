// The pictures and the page of `runway inspect`: every layer's attention maps as PNG
// heatmaps and .npy arrays, the runway-cascade chart, inspect.json and an index.html
// that shows all of it offline. Running the model is lab/inspect.h's part: it hands
// each layer's maps to an InspectFolder, then the cascade computed from them.
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

// One layer's attention on the inspected text (batch row 0), row-major float64.
struct LayerMaps {
  bool rewired = false;           // the layer applies -beta R
  std::vector<double> a;          // (H, T, T) A = softmax(S)
  std::vector<double> a_rewired;  // (H, T, T) A', the attention used (a standard layer: A)
  std::vector<double> p;          // (T, T) the runway head's probabilities
  std::vector<double> r;          // (T, T) runway coefficients (a standard layer: from p, not applied)
};

// The inspect folder, written a layer at a time (one layer's maps in memory at once).
// The folder must exist.
class InspectFolder {
 public:
  InspectFolder(const std::string& out_dir, const nn::GPTConfig& model, const std::vector<uint8_t>& bytes,
                const InspectOptions& options);
  // Writes layer `layer`'s pictures (and arrays) and keeps its section of the page.
  void add_layer(int64_t layer, const LayerMaps& maps);
  // Writes cascade.svg, cascade.json, inspect.json and index.html.
  InspectResult finish(const nn::CascadeReport& cascade);

 private:
  std::string write_map(const std::string& name, const std::vector<double>& m, const std::string& title,
                        bool signed_values);
  std::string page(const InspectResult& result) const;

  std::string out_dir_;
  nn::GPTConfig model_;
  std::vector<uint8_t> bytes_;
  InspectOptions options_;
  int64_t T_;
  std::vector<std::string> labels_;  // one glyph per byte (axis labels)
  nlohmann::json files_ = nlohmann::json::array();
  nlohmann::json layers_ = nlohmann::json::array();
  std::string layer_sections_;
};

// Chart of each layer's runway share by distance, runway_l(d) / (direct_l(d) + runway_l(d)).
std::string cascade_chart_svg(const nn::CascadeReport& report, const std::string& title);

}  // namespace runway::viz
