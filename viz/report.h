// The comparison report of `runway demo` and `runway compare`: from run folders already
// on disk (each a training checkpoint folder with config.json, metrics.jsonl and
// eval.json, plus an inspect folder), one report.html with
//   * a results table (means, and the spread over seeds where there are several),
//   * loss curves (training, smoothed, and validation),
//   * the extrapolation curve (bits per byte against context length),
//   * the passkey grid (accuracy by length and needle depth),
//   * the runway-cascade diagnostics (runway share per layer, and by distance),
//   * heatmaps of the last layer's runway head (A, R, A', A' - A) per configuration,
// as SVG charts under plots/ and the PNGs of the inspect folders; results.json holds
// the aggregated numbers. The page needs no network and no scripts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace runway::viz {

struct ReportRun {
  std::string label;        // the configuration's name: runs with the same label are seeds of it
  uint64_t seed = 0;
  std::string dir;          // the training folder (config.json, metrics.jsonl, eval.json)
  std::string inspect_dir;  // the inspect folder (inspect.json, PNGs, cascade.svg)
  double train_seconds = 0;
};

struct ReportOptions {
  std::string title = "runway: standard vs rewired attention";
  std::string subtitle;  // a line under the title (machine, budget, command)
};

// Writes out_dir/report.html, out_dir/results.json and out_dir/plots/*.svg. Every run
// folder must lie inside out_dir (the page links to them by relative path). Errors name
// the run and the file that is missing or malformed. Returns the results table as
// plain text (for the terminal).
std::string write_report(const std::string& out_dir, const std::vector<ReportRun>& runs,
                         const ReportOptions& options = {});

// mean, sample standard deviation (0 for one value), min and max of the finite values;
// count = how many were finite (all NaN when none).
struct Spread {
  double mean, sd, min, max;
  int64_t count;
};
Spread spread_of(const std::vector<double>& values);

}  // namespace runway::viz
