// `runway train`: trains a byte-level GPT, standard or runway-rewired, on a text file or
// folder (default: Debian's fortunes), with periodic validation, a metrics log, and
// checkpoints that resume exactly. Ctrl-C saves a checkpoint before exiting.
#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <cmath>
#include <fstream>
#include <sstream>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "nn/device.h"
#include "nn/train.h"

namespace runway::apps {

namespace {

std::atomic<bool> g_stop{false};
void on_sigint(int) { g_stop.store(true); }

struct TrainArgs {
  std::string out, config_file;
  std::string device = "cpu";  // a property of this run, not of the config or checkpoint
  bool resume = false;
  // The flags given on the command line, as TrainConfig JSON keys: they override
  // the config file.
  nlohmann::json flags = nlohmann::json::object();
};

int run_train(const TrainArgs& args) {
  const Device device = device_from_option(args.device);
  nn::TrainConfig config;
  if (!args.config_file.empty()) {
    try {
      config.update_from_file(args.config_file);
    } catch (const Error& e) {
      throw Error(fmt::format("--config: {}", e.what()));
    }
  }
  const nlohmann::json& given = args.flags;  // only the flags present on the command line
  config.update_from_json(given, "command line");
  int64_t steps_override = 0;
  if (args.resume) {
    for (const auto& [key, value] : given.items())
      if (key != "steps") fmt::print(stderr, "runway train: --resume uses the saved config; ignoring --{}\n", key);
    if (given.contains("steps")) steps_override = given["steps"].get<int64_t>();
  }
  nn::Trainer trainer(config, args.out, args.resume, steps_override, device);
  const nn::TrainConfig& c = trainer.config();
  fmt::print("runway train: {} attention{}, {} layers, {} heads, width {}, T={}, pos {}\n",
             c.model.rewired ? "rewired" : "standard",
             c.model.rewired ? fmt::format(" ({}, beta {}, runway head {}{})", runway_summary_name(c.model.runway.summary),
                                           c.model.runway.beta, c.model.runway.runway_head, c.model.runway.detach ? ", detached" : "")
                             : "",
             c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.seq_len, nn::position_encoding_name(c.model.pos));
  fmt::print("parameters: {}\n", trainer.model().parameter_count());
  fmt::print("device: {}\n", nn::describe_device(device));
  fmt::print("data: {}; {} steps of {} x {} x {} bytes{}\n", c.data, c.steps, c.batch_size, c.grad_accum, c.model.seq_len,
             args.resume ? fmt::format(", resuming at step {}", trainer.step()) : "");
  std::fflush(stdout);
  g_stop.store(false);
  auto previous = std::signal(SIGINT, on_sigint);
  const int64_t reached = trainer.run([&](const nn::StepReport& r) {
    if (r.step % c.log_every == 0 || r.step == c.steps || r.evaluated)
      fmt::print("step {:>6}/{} | loss {:.4f} | lr {:.2e} | {:.0f} tok/s | ETA {}{}\n", r.step, c.steps, r.loss, r.lr,
                 r.tokens_per_second, nn::format_duration(r.seconds_left),
                 r.evaluated ? fmt::format(" | val loss {:.4f} ({:.3f} bits/byte)", r.val_loss, r.val_loss / std::log(2.0)) : "");
    std::fflush(stdout);
  }, &g_stop);
  std::signal(SIGINT, previous);
  if (reached < c.steps) {
    fmt::print("interrupted at step {}: checkpoint saved in {}\n", reached, args.out);
    return 130;
  }
  fmt::print("done: checkpoint in {}/model.safetensors (config.json, optimizer.safetensors, state.json, metrics.jsonl)\n", args.out);
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a byte-level GPT (standard or runway-rewired attention)");
  cmd->add_option("--out", args->out, "Output folder for checkpoints and metrics")->required();
  cmd->add_option("--config", args->config_file, "JSON file of settings (keys as the flags, with underscores)");
  cmd->add_flag("--resume", args->resume, "Continue from the checkpoint in --out (its config is used; --steps may extend it)");
  add_device_option(cmd, &args->device);
  // Every TrainConfig key is a flag: --n-layer for n_layer, and so on.
  const nn::TrainConfig default_config;
  const nlohmann::json defaults = default_config.to_json();
  for (const auto& [key, value] : defaults.items()) {
    std::string flag = "--" + key;
    for (auto& ch : flag) if (ch == '_') ch = '-';
    const std::string k = key;
    auto set = [args, k, d = nlohmann::json(value)](const std::string& text) {
      try {
        if (d.is_string()) args->flags[k] = text;
        else if (d.is_boolean()) args->flags[k] = text != "false" && text != "0";
        else if (d.is_array()) {
          std::vector<int64_t> list;
          std::stringstream ss(text);
          std::string item;
          while (std::getline(ss, item, ',')) if (!item.empty()) list.push_back(std::stoll(item));
          args->flags[k] = list;
        } else if (d.is_number_integer() || d.is_number_unsigned()) args->flags[k] = std::stoll(text);
        else args->flags[k] = std::stod(text);
      } catch (const std::exception&) {
        throw CLI::ValidationError("--" + k, "'" + text + "' is not a valid value");
      }
    };
    if (value.is_boolean()) {
      cmd->add_flag_callback(flag, [set] { set("true"); }, "(default false)");
    } else {
      cmd->add_option_function<std::string>(flag, set, fmt::format("(default {})", value.dump()));
    }
  }
  cmd->callback([args, exit_code] { *exit_code = run_train(*args); });
}

}  // namespace runway::apps
