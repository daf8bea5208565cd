// `runway train`: trains a byte-level GPT, standard or runway-rewired, on a text file or
// folder (default: Debian's fortunes), with periodic validation, a metrics log, and
// checkpoints that resume exactly. Checkpoints are saved every --save-every steps and
// every --save-every-seconds, and when Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143)
// stops the run; see docs/reliability.md.
#include <fmt/format.h>
#include <cerrno>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ioctl.h>

#include <atomic>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <fstream>
#include <sstream>

#include "apps/commands.h"
#include "apps/device_option.h"
#include "apps/parse.h"
#include "nn/checkpoint.h"
#include "nn/config.h"
#include "nn/device.h"
#include "nn/distributed.h"
#include "nn/train.h"
#ifdef RUNWAY_HAS_NCCL
#include "cuda/nccl_communicator.h"
#endif

namespace runway::apps {

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};  // the signal that stopped the run
void on_stop_signal(int signal) {
  g_signal.store(signal);
  g_stop.store(true);
}

struct TrainArgs {
  std::string out, config_file;
  std::string device = "cpu";  // a property of this run, not of the config or checkpoint
  bool resume = false;
  bool overwrite = false;
  nn::SaveSchedule save;
  // The flags given on the command line, as TrainConfig JSON keys: they override
  // the config file.
  nlohmann::json flags = nlohmann::json::object();
};

// The run's config: the config file (if any), then the flags given on the command line.
nn::TrainConfig config_from_args(const TrainArgs& args) {
  nn::TrainConfig config;
  if (!args.config_file.empty()) {
    try {
      config.update_from_file(args.config_file);
    } catch (const Error& e) {
      throw Error(fmt::format("--config: {}", e.what()));
    }
  }
  config.update_from_json(args.flags, "command line");
  return config;
}

// A resumed run keeps its saved config, so every flag but --steps is ignored (and, when
// `talk`, said so). Returns the --steps given, or 0.
int64_t steps_override_on_resume(const TrainArgs& args, bool talk) {
  if (!args.resume) return 0;
  const nlohmann::json& given = args.flags;  // only the flags present on the command line
  for (const auto& [key, value] : given.items())
    if (key != "steps" && talk) fmt::print(stderr, "runway train: --resume uses the saved config; ignoring --{}\n", key);
  return given.contains("steps") ? given["steps"].get<int64_t>() : 0;
}

// SIGINT and SIGTERM set g_stop (and g_signal) while this lives; the handlers before it
// come back when it goes.
class StopSignalHandlers {
 public:
  StopSignalHandlers() {
    g_stop.store(false);
    g_signal.store(0);
    previous_int_ = std::signal(SIGINT, on_stop_signal);
    previous_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignalHandlers() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }
  StopSignalHandlers(const StopSignalHandlers&) = delete;
  StopSignalHandlers& operator=(const StopSignalHandlers&) = delete;

 private:
  void (*previous_int_)(int) = nullptr;
  void (*previous_term_)(int) = nullptr;
};

// What is about to run: the model, its size, the device, the data and the schedule.
void print_run_summary(const nn::Trainer& trainer, const TrainArgs& args, Device device,
                       const nn::Communicator* comm) {
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
  if (comm)
    fmt::print("data parallel: {} ranks, {} of {} rows of every micro-batch each; gradients summed by {} all-reduce\n",
               comm->size(), c.batch_size / comm->size(), c.batch_size, comm->name());
  std::fflush(stdout);
}

// One step's progress line.
std::string step_line(const nn::StepReport& r, const nn::TrainConfig& c, bool data_parallel) {
  return fmt::format("step {:>6}/{} | loss {:.4f} | lr {:.2e} | {:.0f} tok/s | ETA {}{}{}\n", r.step, c.steps, r.loss, r.lr,
                     r.tokens_per_second, nn::format_duration(r.seconds_left),
                     data_parallel ? fmt::format(" | all-reduce {:.2f} ms", r.allreduce_seconds * 1e3) : "",
                     r.evaluated ? fmt::format(" | val loss {:.4f} ({:.3f} bits/byte)", r.val_loss, r.val_loss / std::log(2.0))
                                 : "");
}

// Whether `bytes` more fit in the first half of the pipe behind fd (true when fd is not a
// pipe). mpirun stops reading rank 0's pipe while it tears the job down, and reads what is
// left in it after the rank has exited: keeping half of it free for the closing line is
// what lets that line reach the log.
bool pipe_has_room(int fd, size_t bytes) {
  int queued = 0;
  const int capacity = ::fcntl(fd, F_GETPIPE_SZ);
  if (capacity <= 0 || ::ioctl(fd, FIONREAD, &queued) != 0) return true;
  return static_cast<size_t>(queued) + bytes <= static_cast<size_t>(capacity) / 2;
}

// Writes text to stdout (rank 0's pipe to mpirun). A progress line is written only when
// it fits in the free half of the pipe, and without blocking (dropped otherwise); the
// closing line may block and use the reserved half. A closed pipe (EPIPE, with SIGPIPE
// ignored) drops the text. stdout's buffer is flushed first, so the order holds.
void write_to_pipe(const std::string& text, bool closing) {
  std::fflush(stdout);
  const int fd = STDOUT_FILENO;
  if (!closing && !pipe_has_room(fd, text.size())) return;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, closing ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;  // EAGAIN: the pipe is full (dropped); EPIPE: mpirun is gone
    }
  }
}

// DIR/stop.json (nn/checkpoint.h). The checkpoint is already safe, so a failure to write
// the record is a warning, not a failed run.
void record_stop(const std::string& out, int64_t step, const char* reason) {
  try {
    nn::write_stop_record(out, step, reason);
  } catch (const Error& e) {
    fmt::print(stderr, "runway train: warning: {}\n", e.what());
  }
}

// One process's part of a run: the whole run, or one rank's of a data-parallel run
// (comm; rank 0 alone prints).
int train_in_this_process(const TrainArgs& args, nn::Communicator* comm) {
  const bool talk = !comm || comm->rank() == 0;
  const Device device = device_from_option(args.device);
  const nn::TrainConfig config = config_from_args(args);
  const int64_t steps_override = steps_override_on_resume(args, talk);
  // Handlers first: a SIGTERM while the trainer loads makes it save at once and stop.
  const StopSignalHandlers handlers;
  nn::Trainer trainer(config, args.out, args.resume, steps_override, device, args.overwrite, comm);
  trainer.set_save_schedule(args.save);
  const nn::TrainConfig& c = trainer.config();
  if (talk) nn::clear_stop_record(args.out);
  if (talk) print_run_summary(trainer, args, device, comm);
  // Rank 0 of a data-parallel run writes through a pipe to mpirun, which stops reading it
  // while it tears the job down after Ctrl-C (SIGCONT, SIGTERM a second later, SIGKILL a
  // second after that), and may close it: a failed write must not kill the rank (SIGPIPE),
  // a blocking write into the full pipe would hold the rank until it is killed, before
  // the stop's save, and a full pipe would lose the closing line. So progress lines are
  // dropped rather than fill more than half the pipe (write_to_pipe).
  const auto say = [&](const std::string& text, bool closing = false) {
    if (!talk) return;
    if (comm) {
      write_to_pipe(text, closing);
    } else {
      fmt::print("{}", text);
      std::fflush(stdout);
    }
  };
  if (comm) std::signal(SIGPIPE, SIG_IGN);
  const int64_t reached = trainer.run([&](const nn::StepReport& r) {
    if (r.step % c.log_every == 0 || r.step == c.steps || r.evaluated) say(step_line(r, c, comm != nullptr));
    if (r.checkpointed) say(fmt::format("checkpoint: step {} saved\n", r.step));
  }, &g_stop);
  const bool interrupted = reached < c.steps;
  const bool terminated = g_signal.load() == SIGTERM;
  const char* signal_name = terminated ? "SIGTERM" : "SIGINT";
  if (talk) record_stop(args.out, reached, interrupted ? signal_name : "done");
  if (interrupted) {
    say(fmt::format("interrupted at step {} by {}: checkpoint saved in {}\n", reached, signal_name, args.out),
        /*closing=*/true);
    return terminated ? 143 : 130;  // the shell's codes for death by these signals
  }
  say(fmt::format("done: checkpoint of step {} in {}/checkpoints/ (with config.json and metrics.jsonl)\n", reached,
                  args.out),
      /*closing=*/true);
  return 0;
}

int run_train(const TrainArgs& args) {
  // Started by mpirun: one rank of a data-parallel run (docs/distributed.md); otherwise
  // the single-process path, which uses no communicator.
  std::unique_ptr<nn::Communicator> comm = nn::make_mpi_communicator();
  if (!comm && std::getenv("RUNWAY_DATA_PARALLEL_SELF")) comm = nn::make_self_communicator();  // N = 1, no MPI
  if (!comm) return train_in_this_process(args, nullptr);
  try {
#ifdef RUNWAY_HAS_NCCL
    // On GPUs the gradient buffer is reduced by NCCL on the device; MPI does the rest.
    // (Only once the device is known to be usable: an unusable one is a clear error first.)
    if (device_from_option(args.device) == Device::CUDA) comm = cuda::make_nccl_communicator(std::move(comm));
#endif
    return train_in_this_process(args, comm.get());
  } catch (const std::exception& e) {
    // A rank that fails takes the whole job down (MPI_Abort), so no rank waits forever
    // for it in a collective; the checkpoints on disk are untouched (rank 0 writes them
    // atomically, and a save cut short leaves the previous one whole).
    std::fflush(stdout);
    std::fprintf(stderr, "runway: error: rank %d of %d: %s\n", comm->rank(), comm->size(), e.what());
    comm->abort(1);
  }
  return 1;  // not reached: abort ends the process
}

// The JSON value of a config flag's text, parsed strictly by the field's type (the
// range and the allowed names are checked by nn::check_field_value after).
nlohmann::json config_flag_value(const nn::ConfigField& field, const std::string& flag, const std::string& text) {
  switch (field.type) {
    case nn::FieldType::Int: return parse_int(flag, text);
    case nn::FieldType::UInt: return parse_uint(flag, text);
    case nn::FieldType::Float: return parse_float(flag, text);
    case nn::FieldType::IntList: return text.empty() ? std::vector<int64_t>{} : parse_int_list(flag, text);
    case nn::FieldType::Bool: return text == "true";
    case nn::FieldType::String:
    case nn::FieldType::Enum: return text;
  }
  return text;
}

std::string config_flag_type(const nn::ConfigField& field) {
  switch (field.type) {
    case nn::FieldType::Int: return "INT";
    case nn::FieldType::UInt: return "UINT";
    case nn::FieldType::Float: return "FLOAT";
    case nn::FieldType::IntList: return "INT,...";
    case nn::FieldType::Bool: return "";
    case nn::FieldType::String: return "TEXT";
    case nn::FieldType::Enum: {
      std::string names;
      for (const std::string& a : field.allowed) names += (names.empty() ? "" : ",") + a;
      return "{" + names + "}";
    }
  }
  return "TEXT";
}

}  // namespace

void add_train_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a byte-level GPT (standard or runway-rewired attention)");
  cmd->add_option("--out", args->out, "Output folder for checkpoints and metrics")->required();
  cmd->add_option("--config", args->config_file, "JSON file of settings (keys as the flags, with underscores)");
  CLI::Option* resume_flag =
      cmd->add_flag("--resume", args->resume, "Continue from the checkpoint in --out (its config is used; --steps may extend it)");
  // Checkpointing and ownership (docs/reliability.md); not part of the config.
  cmd->add_flag("--overwrite", args->overwrite, "Replace the run already in --out (without it, an existing run is refused)")
      ->excludes(resume_flag);
  add_int_option(cmd, "--save-every", &args->save.every_steps, "Also save a checkpoint every this many steps (0: off)",
                 NumberRange::at_least(0));
  add_float_option(cmd, "--save-every-seconds", &args->save.every_seconds,
                   "Also save a checkpoint when this many seconds have passed since the last one (0: off)",
                   NumberRange::at_least(0));
  add_device_option(cmd, &args->device);
  // Every TrainConfig field is a flag (the table of nn/config.h): --n-layer for n_layer,
  // and so on. A value is checked as it is parsed (type, range, allowed names), so a bad
  // one is a usage error naming the flag; cross-field rules are checked by the trainer.
  for (const nn::ConfigField& field : nn::train_config_fields()) {
    const std::string flag = field.flag();
    if (field.type == nn::FieldType::Bool) {
      cmd->add_flag_callback(flag, [args, key = field.key] { args->flags[key] = true; },
                             fmt::format("{} (default {})", field.help, field.default_text()));
      continue;
    }
    const std::string help = fmt::format("{} (default {}; {})", field.help, field.default_text(), field.allowed_text());
    cmd->add_option_function<std::string>(
           flag,
           [args, &field, flag](const std::string& text) {
             const nlohmann::json value = config_flag_value(field, flag, text);
             try {
               nn::check_field_value(field, value, flag);
             } catch (const UsageError&) {
               throw;
             } catch (const Error& e) {
               throw UsageError(e.what());
             }
             args->flags[field.key] = value;
           },
           help)
        ->type_name(config_flag_type(field));
  }
  cmd->callback([args, exit_code] { *exit_code = run_train(*args); });
}

}  // namespace runway::apps
