// `runway inspect`: attention maps (A, P, R, A', A' - A) of every layer and head as PNG
// heatmaps and .npy arrays, the runway-cascade diagnostics, and an index.html, for one
// text run through a checkpoint. The work is in lab/inspect.h (running the model) and
// viz/inspect.h (pictures and page).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "apps/parse.h"
#include "engine/file_io.h"
#include "nn/config.h"
#include "engine/random.h"
#include "nn/data.h"
#include "nn/train.h"
#include "lab/inspect.h"

namespace runway::apps {

namespace {

struct InspectArgs {
  std::string checkpoint, out, text, file, device = "cpu";
  int64_t passkey_length = 0;
  double depth = 0.5;
  uint64_t seed = 1;
  int64_t max_len = 0;
  bool no_npy = false;
};

std::vector<uint8_t> choose_text(const InspectArgs& args, const nn::TrainConfig& config, int64_t max_len) {
  std::string text;
  if (!args.text.empty()) {
    text = args.text;
  } else if (!args.file.empty()) {
    text = read_regular_file(args.file, "--file", "a text file");  // a FIFO or device is refused, never read
    if (text.empty()) throw Error(fmt::format("--file: '{}' is empty", args.file));
  } else if (args.passkey_length > 0) {
    if (args.depth < 0 || args.depth > 1) throw Error(fmt::format("--depth must be in [0, 1], got {}", args.depth));
    Generator gen(args.seed);
    text = nn::make_passkey(args.passkey_length, args.depth, gen).text;
  } else {
    // Default: the start of the validation split the model was evaluated on.
    const std::vector<uint8_t> val = nn::load_corpus(config.data, config.val_fraction).val;
    text.assign(val.begin(), val.begin() + std::min<int64_t>(static_cast<int64_t>(val.size()), max_len));
  }
  if (static_cast<int64_t>(text.size()) > max_len) {
    fmt::print("inspect: using the first {} of {} bytes (--max-len)\n", max_len, text.size());
    text.resize(static_cast<size_t>(max_len));
  }
  return std::vector<uint8_t>(text.begin(), text.end());
}

int run_inspect(const InspectArgs& args) {
  const int given = !args.text.empty() + !args.file.empty() + (args.passkey_length > 0);
  if (given > 1) throw UsageError("give at most one of --text, --file and --passkey");
  const Device device = device_from_option(args.device);
  nn::TrainConfig config;
  config.update_from_file(args.checkpoint + "/config.json");
  const int64_t max_len = args.max_len > 0 ? args.max_len : config.model.seq_len;
  const std::vector<uint8_t> bytes = choose_text(args, config, max_len);
  const int64_t length = static_cast<int64_t>(bytes.size());
  nn::check_fits_in_memory(nn::inference_memory_bytes(config.model, 1, length),
                           fmt::format("running this model on {} bytes", length), "choose a smaller --max-len");
  std::unique_ptr<nn::GPT> model = nn::load_model(args.checkpoint, device, &config);
  const std::string out = args.out.empty() ? (std::filesystem::path(args.checkpoint) / "inspect").string() : args.out;
  viz::InspectOptions options;
  options.title = args.checkpoint;
  options.write_npy = !args.no_npy;
  const viz::InspectResult result = lab::inspect_model(*model, bytes, out, options);
  fmt::print("runway inspect: {} bytes through {} ({} model, {} layers, {} heads)\n", bytes.size(), args.checkpoint,
             config.model.rewired ? "rewired" : "standard", config.model.n_layer, config.model.n_head);
  fmt::print("runway cascade (share of j's influence on i through the runway, pairs at distance >= 2):\n");
  for (size_t l = 0; l < result.cascade.layers.size(); ++l)
    fmt::print("  layer {}: {:.3f}\n", l, result.cascade.layers[l].runway_share);
  fmt::print("wrote {} files; open {}\n", result.summary["files"].size() + 2,
             (std::filesystem::path(out) / "index.html").string());
  return 0;
}

}  // namespace

void add_inspect_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Attention maps (A, P, R, A', A' - A) per layer and head as PNG + .npy, runway-cascade diagnostics and an "
      "index.html, for one text through a checkpoint");
  cmd->add_option("--checkpoint", args->checkpoint, "Checkpoint folder (the --out of `runway train`)")->required();
  cmd->add_option("--out", args->out, "Output folder (default: CHECKPOINT/inspect)");
  cmd->add_option("--text", args->text, "The text to run (default: the start of the validation split)");
  cmd->add_option("--file", args->file, "Read the text from this file");
  add_int_option(cmd, "--passkey", &args->passkey_length, "Use a passkey document of this many bytes instead",
                 NumberRange::closed(1, 1 << 24), false);
  add_float_option(cmd, "--depth", &args->depth, "Needle depth for --passkey", NumberRange::closed(0, 1));
  add_uint_option(cmd, "--seed", &args->seed, "Seed of the passkey key");
  add_int_option(cmd, "--max-len", &args->max_len, "Use at most this many bytes (default: the training length)",
                 NumberRange::closed(1, 1 << 24), false);
  cmd->add_flag("--no-npy", args->no_npy, "Write only the pictures, not the .npy arrays");
  add_device_option(cmd, &args->device);
  cmd->callback([args, exit_code]() { *exit_code = run_inspect(*args); });
}

}  // namespace runway::apps
