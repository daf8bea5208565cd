// `runway generate`: prompted sampling from a checkpoint with a KV cache (and, for
// rewired layers, the incremental runway state of the spec).
#include <fmt/format.h>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "nn/decode.h"
#include "nn/train.h"

namespace runway::apps {

namespace {
struct GenerateArgs {
  std::string checkpoint, prompt;
  int64_t tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 40;
  uint64_t seed = 1;
  std::string device = "cpu";
};
}  // namespace

void add_generate_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a trained checkpoint");
  cmd->add_option("--checkpoint", args->checkpoint, "Folder written by `runway train`")->required();
  cmd->add_option("--prompt", args->prompt, "Text to continue")->required();
  cmd->add_option("--tokens", args->tokens, "Bytes to generate")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", args->temperature, "Sampling temperature; 0 is greedy")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", args->top_k, "Sample among the k most likely bytes; 0 for all")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  add_device_option(cmd, &args->device);
  cmd->callback([args, exit_code] {
    const Device device = device_from_option(args->device);
    nn::TrainConfig config;
    auto model = nn::load_model(args->checkpoint, device, &config);
    Generator gen(args->seed);
    const std::string text = nn::generate(*model, args->prompt, args->tokens, {args->temperature, args->top_k}, gen);
    fmt::print("{}{}\n", args->prompt, text);
    *exit_code = 0;
  });
}

}  // namespace runway::apps
