// A study: several configurations, each trained for the same number of steps on the
// same data with one or more seeds, then evaluated (bits per byte at L..8L, passkey
// grid, associative recall), inspected on one shared sample (lab/inspect.h), and
// reported (viz/report.h). `runway demo` is a study of two configurations (standard and
// rewired, same shape); `runway compare` takes any configurations and seeds.
//
// Budget: with steps == 0 the number of steps comes from `minutes`: every configuration
// is timed for a few throwaway steps first, then
//   steps = (minutes * 60 * 0.85 - seconds spent so far - 5 s per run for evaluation)
//           / (seeds * sum over configurations of seconds per step),
// at least 10; the remaining time is for evaluation, inspection and the report.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "nn/train.h"

namespace runway::lab {

struct StudyConfig {
  std::string label;      // unique; names the run folders (characters other than [A-Za-z0-9_.-] become '-')
  nn::TrainConfig train;  // its seed is replaced by each of the study's seeds
};

struct StudyOptions {
  std::string out_dir = "runs/demo";
  std::vector<StudyConfig> configs;
  std::vector<uint64_t> seeds = {1};
  int64_t steps = 0;     // per run; 0: from the time budget
  double minutes = 5.0;  // total budget when steps == 0
  // With steps from the budget, each run's warmup becomes min(its warmup, steps / 10)
  // and its validation happens about 10 times; with fixed steps only the latter.
  Device device = Device::CPU;
  // Evaluation.
  int64_t eval_max_windows = 48;          // per length (evenly spread)
  int64_t passkey_trials = 8;             // per (length, depth) cell; 0 skips passkey
  std::vector<int64_t> passkey_lengths;   // empty: L and 2L (those >= the passkey minimum)
  // In multiples of each run's training length L (when not empty, they replace the
  // defaults): bits per byte at k L, passkey documents of round(k L) bytes (k may be a
  // fraction: between L and 2L is where a small model's retrieval fades).
  std::vector<int64_t> eval_lengths_in_L;
  std::vector<double> passkey_lengths_in_L;
  int64_t recall_trials = 32;             // 0 skips recall
  uint64_t eval_seed = 1;
  int64_t inspect_length = 64;            // bytes of the shared inspection sample
  // A run folder that a previous study finished (trained, evaluated, inspected) with the
  // same training config and the same evaluation settings is reused instead of trained
  // again (its study_run.json, written last, records both): an interrupted study resumes
  // where it stopped. Otherwise, and always when false, the folder is replaced.
  bool reuse_finished = false;
  std::string title = "runway: standard vs rewired attention";
  std::string command_line;               // shown in the report's subtitle
};

struct StudyResult {
  std::string table;        // the results table as text
  std::string report_path;  // out_dir/report.html
  int64_t steps = 0;        // per run
  double seconds = 0;       // wall time of the whole study
  bool interrupted = false; // *stop became true: checkpoints saved, no report
};

// Validates the options (labels unique and non-empty, seeds non-empty, steps >= 0,
// minutes > 0, every config valid) before any work, then runs the study with a
// progress line on stdout. Run folders go to out_dir/runs/<label>-seed<seed> (an
// existing one is replaced unless reuse_finished finds it finished; a folder there that
// is not a run folder is an error).
StudyResult run_study(const StudyOptions& options, const std::atomic<bool>* stop = nullptr);

}  // namespace runway::lab
