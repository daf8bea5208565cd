// `runway eval`: evaluates a checkpoint written by `runway train`:
//   * bits per byte on the validation bytes at several context lengths (default L, 2L,
//     4L, 8L with L the training length), the length-extrapolation curve;
//   * passkey retrieval: greedy decoding of a 5-digit key hidden at several depths of
//     documents of several lengths (default L and 2L);
//   * associative recall (teacher forced), sized to fit in L.
// Prints tables and writes every number to DIR/eval.json (atomically).
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "nn/data.h"
#include "nn/eval.h"
#include "nn/train.h"

namespace runway::apps {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::vector<int64_t> lengths;          // empty: L, 2L, 4L, 8L
  int64_t stride = 0;                    // 0: non-overlapping windows
  int64_t max_windows = 64;              // per length; 0: all
  int64_t batch_size = 8;
  int64_t passkey_trials = 10;           // per cell; 0 skips passkey
  std::vector<int64_t> passkey_lengths;  // empty: L, 2L
  int64_t recall_pairs = 0;              // 0: sized from L
  int64_t recall_queries = 0;            // 0: sized from L
  int64_t recall_trials = 32;            // 0 skips recall
  uint64_t seed = 1;
  std::string data;                      // empty: the checkpoint's corpus
  std::string device = "cpu";
};

// "128 (2L)" when the length is a multiple of L, else "100".
std::string length_label(int64_t T, int64_t L) {
  if (T % L == 0) return fmt::format("{} ({}L)", T, T / L);
  return fmt::format("{}", T);
}

int run_eval(const EvalArgs& args) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(args.checkpoint))
    throw Error(fmt::format("checkpoint folder '{}' does not exist (expected the --out folder of `runway train`)",
                            args.checkpoint));
  for (int64_t T : args.lengths)
    if (T < 1) throw Error(fmt::format("--lengths: every length must be >= 1, got {}", T));
  for (int64_t T : args.passkey_lengths)
    if (T < 1) throw Error(fmt::format("--passkey-lengths: every length must be >= 1, got {}", T));
  if (args.stride < 0) throw Error(fmt::format("--stride must be >= 0 (0: non-overlapping), got {}", args.stride));
  if (args.max_windows < 0) throw Error(fmt::format("--max-windows must be >= 0 (0: all), got {}", args.max_windows));
  if (args.batch_size < 1) throw Error(fmt::format("--batch-size must be >= 1, got {}", args.batch_size));
  if (args.passkey_trials < 0) throw Error(fmt::format("--passkey-trials must be >= 0 (0: skip), got {}", args.passkey_trials));
  if (args.recall_trials < 0) throw Error(fmt::format("--recall-trials must be >= 0 (0: skip), got {}", args.recall_trials));
  if (args.recall_pairs < 0 || args.recall_queries < 0)
    throw Error("--recall-pairs and --recall-queries must be >= 1 (or 0 for the default size)");
  const Device device = device_from_option(args.device);

  nn::TrainConfig config;
  std::unique_ptr<nn::GPT> model = nn::load_model(args.checkpoint, device, &config);
  const nn::GPTConfig& m = config.model;
  const int64_t L = m.seq_len;
  // The recall size, checked before any work.
  int64_t P = 0, Q = 0;
  nn::default_recall_size(L, &P, &Q);
  if (args.recall_pairs > 0) P = args.recall_pairs;
  if (args.recall_queries > 0) Q = args.recall_queries;
  else Q = std::min(Q, P);  // a default Q never exceeds a given P
  if (args.recall_trials > 0 && (P > 676 || Q > P))
    throw Error(fmt::format("--recall-pairs {} / --recall-queries {}: pairs must be at most 676 (distinct 2-letter keys) "
                            "and queries at most the pairs (each query asks a distinct pair)", P, Q));
  fmt::print("runway eval: {}: {} attention, {} layers, {} heads, width {}, L={}, pos {}, {} parameters\n",
             args.checkpoint, m.rewired ? "rewired" : "standard", m.n_layer, m.n_head, m.n_embd, L,
             nn::position_encoding_name(m.pos), model->parameter_count());

  const std::string data_path = args.data.empty() ? config.data : args.data;
  const std::vector<uint8_t> val = nn::load_corpus(data_path, config.val_fraction).val;
  fmt::print("data: {} (validation split, fraction {}: {} bytes); device: {}\n", data_path, config.val_fraction,
             val.size(), nn::describe_device(device));

  nlohmann::json out;
  out["checkpoint"] = args.checkpoint;
  out["config"] = config.to_json();
  out["parameter_count"] = model->parameter_count();
  out["data"] = data_path;
  out["val_fraction"] = config.val_fraction;
  out["val_bytes"] = val.size();
  out["seed"] = args.seed;
  out["device"] = device_name(device);

  // ---- bits per byte ---------------------------------------------------------------------
  const std::vector<int64_t> lengths = args.lengths.empty() ? std::vector<int64_t>{L, 2 * L, 4 * L, 8 * L} : args.lengths;
  fmt::print("\nbits per byte ({}, {}; batch {})\n",
             args.stride == 0 ? "non-overlapping windows" : fmt::format("stride {}", args.stride),
             args.max_windows == 0 ? std::string("all windows")
                                   : fmt::format("at most {} windows per length, evenly spread", args.max_windows),
             args.batch_size);
  fmt::print("  {:>12} | {:>13} | {:>9} | {:>9}\n", "length", "windows", "targets", "bits/byte");
  std::fflush(stdout);
  nlohmann::json points = nlohmann::json::array();
  for (int64_t T : lengths) {
    const nn::EvalCurvePoint p =
        nn::bits_per_byte(*model, val, T, std::min(args.stride, T), args.max_windows, args.batch_size);
    if (p.available)
      fmt::print("  {:>12} | {:>13} | {:>9} | {:>9.4f}\n", length_label(T, L),
                 fmt::format("{}/{}", p.windows, p.windows_total), p.targets, p.bits_per_byte);
    else
      fmt::print("  {:>12} | not available: {}\n", length_label(T, L), p.note);
    std::fflush(stdout);
    points.push_back(nn::to_json(p));
  }
  out["bits_per_byte"] = {{"stride", args.stride}, {"max_windows", args.max_windows},
                          {"batch_size", args.batch_size}, {"points", points}};

  // ---- passkey retrieval ------------------------------------------------------------------
  if (args.passkey_trials > 0) {
    const std::vector<int64_t> requested =
        args.passkey_lengths.empty() ? std::vector<int64_t>{L, 2 * L} : args.passkey_lengths;
    std::vector<int64_t> plengths, skipped;
    for (int64_t T : requested) (T < nn::passkey_min_length() ? skipped : plengths).push_back(T);
    const std::vector<double>& depths = nn::default_passkey_depths();
    fmt::print("\npasskey retrieval (5 digits decoded greedily, exact match; {} trials per cell; seed {})\n",
               args.passkey_trials, args.seed);
    for (int64_t T : skipped)
      fmt::print("  length {}: skipped, a passkey document needs at least {} bytes\n", T, nn::passkey_min_length());
    nlohmann::json cells = nlohmann::json::array();
    if (!plengths.empty()) {
      std::string header = fmt::format("  {:>12} |", "length");
      for (double d : depths) header += fmt::format(" {:>10}", fmt::format("depth {:.2f}", d));
      fmt::print("{} | {:>6}\n", header, "mean");
      std::fflush(stdout);
      for (int64_t T : plengths) {
        std::string row = fmt::format("  {:>12} |", length_label(T, L));
        std::string note;
        double total = 0;
        int64_t counted = 0;
        for (double d : depths) {
          const nn::PasskeyCell c = nn::passkey_accuracy(*model, T, d, args.passkey_trials, args.seed, args.batch_size);
          if (c.available) {
            row += fmt::format(" {:>10.2f}", c.accuracy);
            total += c.accuracy;
            ++counted;
          } else {
            row += fmt::format(" {:>10}", "n/a");
            note = c.note;
          }
          cells.push_back(nn::to_json(c));
        }
        row += counted > 0 ? fmt::format(" | {:>6.2f}", total / static_cast<double>(counted)) : fmt::format(" | {:>6}", "n/a");
        fmt::print("{}{}\n", row, note.empty() ? "" : "  (" + note + ")");
        std::fflush(stdout);
      }
    }
    out["passkey"] = {{"trials", args.passkey_trials}, {"depths", depths}, {"lengths", plengths},
                      {"skipped_lengths", skipped}, {"cells", cells}};
  }

  // ---- associative recall -----------------------------------------------------------------
  if (args.recall_trials > 0) {
    const nn::RecallResult r = nn::recall_eval(*model, P, Q, args.recall_trials, args.seed, args.batch_size);
    fmt::print("\nassociative recall ({} pairs, {} queries, {} input bytes, {} trials, teacher forced; seed {})\n", P, Q,
               r.length, args.recall_trials, args.seed);
    if (r.available)
      fmt::print("  accuracy {:.4f} ({}/{} value bytes)\n", r.accuracy, r.correct, r.scored);
    else
      fmt::print("  not available: {}\n", r.note);
    out["recall"] = nn::to_json(r);
  }

  const std::string path = (fs::path(args.checkpoint) / "eval.json").string();
  nn::write_text_file_atomic(path, out.dump(2) + "\n");
  fmt::print("\nwrote {}\n", path);
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Evaluate a checkpoint: bits per byte on the validation split at several context lengths,\n"
      "passkey retrieval over lengths x needle depths, associative recall. Writes DIR/eval.json.");
  cmd->add_option("--checkpoint", args->checkpoint, "Checkpoint folder (the --out of `runway train`)")->required();
  cmd->add_option("--lengths", args->lengths, "Context lengths for bits per byte, comma separated (default L,2L,4L,8L)")
      ->delimiter(',');
  cmd->add_option("--stride", args->stride, "Window stride for bits per byte (0: non-overlapping; clamped to each length)")
      ->capture_default_str();
  cmd->add_option("--max-windows", args->max_windows, "At most this many windows per length, evenly spread (0: all)")
      ->capture_default_str();
  cmd->add_option("--batch-size", args->batch_size, "Windows (or trials) per forward pass")->capture_default_str();
  cmd->add_option("--passkey-trials", args->passkey_trials, "Passkey documents per (length, depth) cell (0: skip)")
      ->capture_default_str();
  cmd->add_option("--passkey-lengths", args->passkey_lengths, "Passkey document lengths, comma separated (default L,2L)")
      ->delimiter(',');
  cmd->add_option("--recall-pairs", args->recall_pairs, "Recall key-value pairs (default: sized so the example fits in L)");
  cmd->add_option("--recall-queries", args->recall_queries, "Recall queries (default: sized so the example fits in L)");
  cmd->add_option("--recall-trials", args->recall_trials, "Recall examples (0: skip)")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the passkey keys and recall examples")->capture_default_str();
  cmd->add_option("--data", args->data, "Text file or folder to take the validation split from (default: the checkpoint's)");
  add_device_option(cmd, &args->device);
  cmd->callback([args, exit_code] {
    try {
      *exit_code = run_eval(*args);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      fmt::print(stderr, "runway eval: error: {}\n", e.what());
      *exit_code = 1;
    }
  });
}

}  // namespace runway::apps
