// `runway eval`: evaluates a checkpoint written by `runway train`:
//   * bits per byte on the validation bytes at several context lengths (default L, 2L,
//     4L, 8L with L the training length), the length-extrapolation curve;
//   * passkey retrieval: greedy decoding of a 5-digit key hidden at several depths of
//     documents of several lengths (default L and 2L);
//   * associative recall (teacher forced), sized to fit in L.
// Prints tables and writes every number to DIR/eval.json (atomically).
#include <fmt/format.h>

#include <cmath>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "apps/parse.h"
#include "nn/config.h"
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
  std::string attention_impl;            // empty: the checkpoint's (config.json)
};

// "128 (2L)" when the length is a multiple of L, else "100".
std::string length_label(int64_t T, int64_t L) {
  if (T % L == 0) return fmt::format("{} ({}L)", T, T / L);
  return fmt::format("{}", T);
}

// Prints each measurement of the suite as a table row as soon as it is known.
class TablePrinter : public nn::EvalSuiteObserver {
 public:
  TablePrinter(const EvalArgs& args, int64_t L, int64_t pairs, int64_t queries)
      : args_(args), L_(L), pairs_(pairs), queries_(queries) {}

  void bits_per_byte_done(const nn::EvalCurvePoint& p) override {
    if (p.available)
      fmt::print("  {:>12} | {:>13} | {:>9} | {:>9.4f}\n", length_label(p.T, L_),
                 fmt::format("{}/{}", p.windows, p.windows_total), p.targets, p.bits_per_byte);
    else
      fmt::print("  {:>12} | not available: {}\n", length_label(p.T, L_), p.note);
    std::fflush(stdout);
    // A NaN or infinite result is a broken model, not a measurement: no eval.json.
    if (p.available && !std::isfinite(p.bits_per_byte))
      throw Error(fmt::format("bits per byte at length {} is {}: the model's outputs are not finite (the weights of a "
                              "diverged run?); not reporting it and not writing eval.json", p.T, p.bits_per_byte));
  }

  void passkey_starting(const std::vector<int64_t>& lengths, const std::vector<int64_t>& skipped) override {
    fmt::print("\npasskey retrieval (5 digits decoded greedily, exact match; {} trials per cell; seed {})\n",
               args_.passkey_trials, args_.seed);
    for (int64_t T : skipped)
      fmt::print("  length {}: skipped, a passkey document needs at least {} bytes\n", T, nn::passkey_min_length());
    if (!lengths.empty()) {
      std::string header = fmt::format("  {:>12} |", "length");
      for (double d : nn::default_passkey_depths()) header += fmt::format(" {:>10}", fmt::format("depth {:.2f}", d));
      fmt::print("{} | {:>6}\n", header, "mean");
    }
    std::fflush(stdout);
  }

  void passkey_done(const nn::PasskeyCell& c, bool last_of_length) override {
    if (row_.empty()) row_ = fmt::format("  {:>12} |", length_label(c.length, L_));
    if (c.available) {
      row_ += fmt::format(" {:>10.2f}", c.accuracy);
      total_ += c.accuracy;
      ++counted_;
    } else {
      row_ += fmt::format(" {:>10}", "n/a");
      note_ = c.note;
    }
    if (!last_of_length) return;
    row_ += counted_ > 0 ? fmt::format(" | {:>6.2f}", total_ / static_cast<double>(counted_)) : fmt::format(" | {:>6}", "n/a");
    fmt::print("{}{}\n", row_, note_.empty() ? "" : "  (" + note_ + ")");
    std::fflush(stdout);
    row_.clear();
    note_.clear();
    total_ = 0;
    counted_ = 0;
  }

  void recall_done(const nn::RecallResult& r) override {
    fmt::print("\nassociative recall ({} pairs, {} queries, {} input bytes, {} trials, teacher forced; seed {})\n", pairs_,
               queries_, r.length, args_.recall_trials, args_.seed);
    if (r.available)
      fmt::print("  accuracy {:.4f} ({}/{} value bytes)\n", r.accuracy, r.correct, r.scored);
    else
      fmt::print("  not available: {}\n", r.note);
  }

 private:
  const EvalArgs& args_;
  int64_t L_, pairs_, queries_;
  std::string row_, note_;  // the passkey row being filled
  double total_ = 0;
  int64_t counted_ = 0;
};

int run_eval(const EvalArgs& args) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(args.checkpoint))
    throw Error(fmt::format("checkpoint folder '{}' does not exist (expected the --out folder of `runway train`)",
                            args.checkpoint));
  // The flags' values were checked when parsed (apps/parse.h).
  const Device device = device_from_option(args.device);

  // The memory a forward pass at the longest length needs, before the model is built.
  nn::TrainConfig config;
  config.update_from_file((fs::path(args.checkpoint) / "config.json").string());
  // --attention-impl overrides the checkpoint's choice, for the memory estimate and the model.
  const std::optional<AttentionImpl> impl =
      args.attention_impl.empty() ? std::nullopt : std::optional<AttentionImpl>(parse_attention_impl(args.attention_impl));
  if (impl) config.model.attention_impl = *impl;
  {
    const int64_t L = config.model.seq_len;
    int64_t longest = args.lengths.empty() ? 8 * L : 0;
    for (int64_t T : args.lengths) longest = std::max(longest, T);
    for (int64_t T : args.passkey_lengths) longest = std::max(longest, T);
    if (args.passkey_lengths.empty() && args.passkey_trials > 0) longest = std::max(longest, 2 * L);
    nn::check_fits_in_memory(nn::inference_memory_bytes(config.model, args.batch_size, longest),
                             fmt::format("evaluating this model on batches of {} x {} bytes", args.batch_size, longest),
                             "choose a smaller --batch-size or shorter --lengths / --passkey-lengths");
  }
  std::unique_ptr<nn::GPT> model = nn::load_model(args.checkpoint, device, &config);
  if (impl) {  // load_model read config.json again
    config.model.attention_impl = *impl;
    model->set_attention_impl(*impl);
  }
  const nn::GPTConfig& m = config.model;
  const int64_t L = m.seq_len;
  nn::EvalSuiteOptions suite;
  suite.lengths = args.lengths;
  suite.stride = args.stride;
  suite.max_windows = args.max_windows;
  suite.batch_size = args.batch_size;
  suite.passkey_trials = args.passkey_trials;
  suite.passkey_lengths = args.passkey_lengths;
  suite.recall_trials = args.recall_trials;
  suite.recall_pairs = args.recall_pairs;
  suite.recall_queries = args.recall_queries;
  suite.seed = args.seed;
  // The recall size, checked before any work.
  int64_t P = 0, Q = 0;
  nn::eval_suite_recall_size(suite, L, &P, &Q);
  if (args.recall_trials > 0 && (P > 676 || Q > P))
    throw Error(fmt::format("--recall-pairs {} / --recall-queries {}: pairs must be at most 676 (distinct 2-letter keys) "
                            "and queries at most the pairs (each query asks a distinct pair)", P, Q));
  fmt::print("runway eval: {}: {} attention, {} layers, {} heads, width {}, L={}, pos {}, {} parameters; {} kernels\n",
             args.checkpoint, m.rewired ? "rewired" : "standard", m.n_layer, m.n_head, m.n_embd, L,
             nn::position_encoding_name(m.pos), model->parameter_count(), attention_impl_name(m.attention_impl));

  const std::string data_path = args.data.empty() ? config.data : args.data;
  const std::vector<uint8_t> val = nn::load_corpus(data_path, config.val_fraction).val;
  fmt::print("data: {} (validation split, fraction {}: {} bytes); device: {}\n", data_path, config.val_fraction,
             val.size(), nn::describe_device(device));

  fmt::print("\nbits per byte ({}, {}; batch {})\n",
             args.stride == 0 ? "non-overlapping windows" : fmt::format("stride {}", args.stride),
             args.max_windows == 0 ? std::string("all windows")
                                   : fmt::format("at most {} windows per length, evenly spread", args.max_windows),
             args.batch_size);
  fmt::print("  {:>12} | {:>13} | {:>9} | {:>9}\n", "length", "windows", "targets", "bits/byte");
  std::fflush(stdout);
  TablePrinter printer(args, L, P, Q);
  nlohmann::json out = nn::run_eval_suite(*model, config, data_path, val, device, suite, printer);
  out["checkpoint"] = args.checkpoint;

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
  const NumberRange any_length = NumberRange::closed(1, 1 << 24), count = NumberRange::closed(0, 1 << 30);
  add_int_list_option(cmd, "--lengths", &args->lengths,
                      "Context lengths for bits per byte (default L,2L,4L,8L)", any_length);
  add_int_option(cmd, "--stride", &args->stride, "Window stride for bits per byte (0: non-overlapping; clamped to each length)",
                 NumberRange::closed(0, 1 << 24));
  add_int_option(cmd, "--max-windows", &args->max_windows, "At most this many windows per length, evenly spread (0: all)",
                 count);
  add_int_option(cmd, "--batch-size", &args->batch_size, "Windows (or trials) per forward pass",
                 NumberRange::closed(1, 1 << 20));
  add_int_option(cmd, "--passkey-trials", &args->passkey_trials, "Passkey documents per (length, depth) cell (0: skip)",
                 count);
  add_int_list_option(cmd, "--passkey-lengths", &args->passkey_lengths, "Passkey document lengths (default L,2L)",
                      any_length);
  add_int_option(cmd, "--recall-pairs", &args->recall_pairs,
                 "Recall key-value pairs (0: sized so the example fits in L)", NumberRange::closed(0, 676));
  add_int_option(cmd, "--recall-queries", &args->recall_queries,
                 "Recall queries, at most the pairs (0: sized so the example fits in L)", NumberRange::closed(0, 676));
  add_int_option(cmd, "--recall-trials", &args->recall_trials, "Recall examples (0: skip)", count);
  add_uint_option(cmd, "--seed", &args->seed, "Seed of the passkey keys and recall examples");
  cmd->add_option("--data", args->data, "Text file or folder to take the validation split from (default: the checkpoint's)");
  add_device_option(cmd, &args->device);
  add_choice_option(cmd, "--attention-impl", &args->attention_impl,
                    fmt::format("Attention kernels (default: the checkpoint's attention_impl): auto = blockwise "
                                "from {} positions (never for two_hop on one sequence), materialized keeps the "
                                "T x T maps, blockwise O(T) memory",
                                kBlockwiseAutoFrom),
                    {"auto", "materialized", "blockwise"});
  cmd->callback([args, exit_code] { *exit_code = run_eval(*args); });  // errors: main() reports them
}

}  // namespace runway::apps
