#include "lab/study.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "nn/data.h"
#include "nn/device.h"
#include "nn/eval.h"
#include "lab/inspect.h"
#include "viz/html.h"
#include "viz/report.h"

namespace runway::lab {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string folder_name(const std::string& label) {
  std::string out = label;
  for (char& c : out)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') c = '-';
  return out;
}

// One progress line, redrawn in place on a terminal; elsewhere (logs, CI) a line at
// most every 10 seconds, so the output stays readable.
class Progress {
 public:
  Progress() : tty_(isatty(fileno(stdout)) != 0), start_(Clock::now()), last_(Clock::now() - std::chrono::hours(1)) {}
  void plan(double total_seconds) { planned_ = total_seconds; }
  double elapsed() const { return seconds_since(start_); }

  void update(const std::string& what, bool force = false) {
    const double since_last = std::chrono::duration<double>(Clock::now() - last_).count();
    if (!force && since_last < (tty_ ? 0.2 : 10.0)) return;
    last_ = Clock::now();
    const double e = elapsed();
    std::string head = fmt::format("[{} elapsed", nn::format_duration(e));
    if (planned_ > 0)
      head += fmt::format(", {:3.0f}%, ~{} left", std::min(99.0, 100 * e / planned_), nn::format_duration(planned_ - e));
    const std::string line = head + "] " + what;
    if (tty_) {
      fmt::print("\r\033[K{}", line);
      shown_ = true;
    } else {
      fmt::print("{}\n", line);
    }
    std::fflush(stdout);
  }

  // A permanent line above the progress line.
  void say(const std::string& message) {
    if (tty_ && shown_) fmt::print("\r\033[K");
    shown_ = false;
    fmt::print("{}\n", message);
    std::fflush(stdout);
  }

  void finish() {
    if (tty_ && shown_) fmt::print("\r\033[K");
    shown_ = false;
    std::fflush(stdout);
  }

 private:
  bool tty_;
  bool shown_ = false;
  Clock::time_point start_, last_;
  double planned_ = 0;
};

// Shows the suite's progress on the study's progress line.
class ProgressObserver : public nn::EvalSuiteObserver {
 public:
  ProgressObserver(Progress& progress, const std::string& name) : progress_(progress), name_(name) {}
  void starting(const std::string& what) override { progress_.update(fmt::format("evaluating {}: {}", name_, what), true); }

 private:
  Progress& progress_;
  const std::string& name_;
};

// bits per byte at L..8L, the passkey grid and associative recall, in the layout of
// `runway eval`'s eval.json (the same suite).
json evaluate(const nn::GPT& model, const nn::TrainConfig& config, const std::vector<uint8_t>& val,
              const StudyOptions& o, Progress& progress, const std::string& name) {
  nn::EvalSuiteOptions suite;
  suite.max_windows = o.eval_max_windows;
  suite.passkey_trials = o.passkey_trials;
  suite.passkey_lengths = o.passkey_lengths;
  const int64_t L = config.model.seq_len;
  for (int64_t k : o.eval_lengths_in_L) suite.lengths.push_back(k * L);
  for (double k : o.passkey_lengths_in_L) suite.passkey_lengths.push_back(std::llround(k * static_cast<double>(L)));
  suite.recall_trials = o.recall_trials;
  suite.seed = o.eval_seed;
  ProgressObserver observer(progress, name);
  return nn::run_eval_suite(model, config, config.data, val, o.device, suite, observer);
}

void validate(const StudyOptions& o) {
  if (o.configs.empty()) throw Error("study: no configurations");
  if (o.seeds.empty()) throw Error("study: no seeds");
  if (o.steps < 0) throw Error(fmt::format("steps must be >= 0 (0: from the time budget), got {}", o.steps));
  if (o.steps == 0 && !(o.minutes > 0 && std::isfinite(o.minutes)))
    throw Error(fmt::format("minutes must be > 0, got {}", o.minutes));
  if (o.inspect_length < 1) throw Error(fmt::format("inspect length must be >= 1, got {}", o.inspect_length));
  std::set<std::string> labels, folders;
  for (const StudyConfig& c : o.configs) {
    if (c.label.empty()) throw Error("study: a configuration has an empty label");
    if (!labels.insert(c.label).second) throw Error(fmt::format("study: the label '{}' is used twice", c.label));
    if (!folders.insert(folder_name(c.label)).second)
      throw Error(fmt::format("study: labels '{}' and another one give the same folder name '{}'", c.label,
                              folder_name(c.label)));
    try {
      c.train.validate();
    } catch (const Error& e) {
      throw Error(fmt::format("config '{}': {}", c.label, e.what()));
    }
  }
  std::set<uint64_t> seeds(o.seeds.begin(), o.seeds.end());
  if (seeds.size() != o.seeds.size()) throw Error("study: a seed is listed twice");
}

// Replaces a previous run folder; refuses to delete anything that does not look like one.
void fresh_run_folder(const std::string& dir) {
  if (fs::exists(dir)) {
    if (!fs::is_directory(dir) || !fs::exists(fs::path(dir) / "config.json"))
      throw Error(fmt::format("'{}' exists and is not a run folder (no config.json); move it away first", dir));
    fs::remove_all(dir);
  }
}

// Seconds per optimizer step of a configuration, from a few throwaway steps (the first
// one, which also sizes the allocator caches, is not counted).
double time_steps(const nn::TrainConfig& base, const std::string& dir, Device device, const std::atomic<bool>* stop) {
  nn::TrainConfig c = base;
  c.steps = 4;
  c.warmup = 1;
  c.eval_every = 1000000;
  fs::remove_all(dir);  // a leftover of an interrupted study
  std::vector<double> seconds;
  {
    nn::Trainer trainer(c, dir, false, 0, device);
    trainer.run(
        [&](const nn::StepReport& r) {
          if (r.step > 1)
            seconds.push_back(static_cast<double>(c.batch_size * c.model.seq_len * c.grad_accum) / r.tokens_per_second);
        },
        stop);
  }
  fs::remove_all(dir);
  if (seconds.empty()) return 0;  // interrupted
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

// The steps per run: fixed, or from the budget (formula in study.h) after timing a few
// steps of every configuration.
int64_t study_steps(const StudyOptions& o, Progress& progress, const fs::path& out, const std::atomic<bool>* stop) {
  if (o.steps != 0) return o.steps;
  auto stopped = [&]() { return stop && stop->load(); };
  const size_t runs_total = o.configs.size() * o.seeds.size();
  std::vector<double> seconds_per_step(o.configs.size(), 0.0);
  progress.plan(o.minutes * 60);
  for (size_t c = 0; c < o.configs.size() && !stopped(); ++c) {
    progress.update(fmt::format("timing a few steps of '{}' to size the runs", o.configs[c].label), true);
    seconds_per_step[c] = time_steps(o.configs[c].train, (out / "runs" / ".timing").string(), o.device, stop);
  }
  double per_step_all = 0;
  for (double s : seconds_per_step) per_step_all += s * static_cast<double>(o.seeds.size());
  const double budget = o.minutes * 60 * 0.85 - progress.elapsed() - 5.0 * static_cast<double>(runs_total);
  const int64_t steps = std::max<int64_t>(10, per_step_all > 0 ? static_cast<int64_t>(budget / per_step_all) : 10);
  std::string timing;
  for (size_t c = 0; c < o.configs.size(); ++c)
    timing += fmt::format("{}{} {:.0f} ms", c ? ", " : "", o.configs[c].label, seconds_per_step[c] * 1000);
  progress.say(fmt::format("budget {:g} min: {} steps per run ({} per step)", o.minutes, steps, timing));
  return steps;
}

// A run's training config: the study's seed and steps; about 10 validations per run,
// and with steps from the budget a warmup of at most a tenth of them.
nn::TrainConfig run_config(const StudyConfig& sc, uint64_t seed, int64_t steps, const StudyOptions& o) {
  nn::TrainConfig config = sc.train;
  config.seed = seed;
  config.steps = steps;
  if (o.steps == 0) config.warmup = std::min(config.warmup, std::max<int64_t>(1, steps / 10));
  config.eval_every = std::max<int64_t>(1, steps / 10);
  config.log_every = std::max<int64_t>(1, config.log_every);
  return config;
}

// Evaluates and inspects a trained run into its folder (eval.json, inspect/); the first
// run's validation split gives the shared inspection sample.
std::string evaluate_and_inspect(const nn::Trainer& trainer, const nn::TrainConfig& config, const std::string& dir,
                                 const std::string& name, const StudyOptions& o, Progress& progress,
                                 std::vector<uint8_t>& sample) {
  const std::vector<uint8_t>& val = trainer.validation_bytes();
  if (sample.empty()) {
    const size_t n = std::min<size_t>(val.size(), static_cast<size_t>(o.inspect_length));
    sample.assign(val.begin(), val.begin() + static_cast<std::ptrdiff_t>(n));
  }
  const json eval = evaluate(trainer.model(), config, val, o, progress, name);
  viz::write_text_file((fs::path(dir) / "eval.json").string(), eval.dump(2) + "\n");
  progress.update(fmt::format("inspecting {}", name), true);
  viz::InspectOptions io;
  io.title = name;
  const std::string inspect_dir = (fs::path(dir) / "inspect").string();
  inspect_model(trainer.model(), sample, inspect_dir, io);
  return inspect_dir;
}

// What a finished run folder must match to be reused: its training config and the
// evaluation and inspection settings.
json run_record(const nn::TrainConfig& config, const StudyOptions& o) {
  return json{{"config", config.to_json()},
              {"eval", {{"max_windows", o.eval_max_windows},
                        {"passkey_trials", o.passkey_trials},
                        {"passkey_lengths", o.passkey_lengths},
                        {"lengths_in_L", o.eval_lengths_in_L},
                        {"passkey_lengths_in_L", o.passkey_lengths_in_L},
                        {"recall_trials", o.recall_trials},
                        {"seed", o.eval_seed},
                        {"inspect_length", o.inspect_length}}}};
}

constexpr const char* kRunRecord = "study_run.json";

// The run in `dir` when a previous study finished it with the same record (its
// study_run.json, written after training, evaluation and inspection); nothing otherwise.
std::optional<viz::ReportRun> finished_run(const StudyConfig& sc, uint64_t seed, const std::string& dir,
                                           const json& record) {
  const fs::path path = fs::path(dir) / kRunRecord;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || !fs::exists(fs::path(dir) / "eval.json", ec) ||
      !fs::exists(fs::path(dir) / "inspect" / "inspect.json", ec))
    return std::nullopt;
  std::ifstream in(path);
  const json saved = json::parse(in, nullptr, /*allow_exceptions=*/false);  // unreadable: train it again
  if (!saved.is_object() || saved.value("config", json()) != record["config"] || saved.value("eval", json()) != record["eval"] ||
      !saved.contains("train_seconds") || !saved["train_seconds"].is_number())
    return std::nullopt;
  return viz::ReportRun{sc.label, seed, dir, (fs::path(dir) / "inspect").string(), saved["train_seconds"].get<double>()};
}

// Trains, evaluates and inspects one run; nothing when interrupted (its checkpoint is saved).
std::optional<viz::ReportRun> one_run(const StudyConfig& sc, uint64_t seed, int64_t steps, const StudyOptions& o,
                                      const fs::path& out, Progress& progress, std::vector<uint8_t>& sample,
                                      const std::atomic<bool>* stop) {
  const nn::TrainConfig config = run_config(sc, seed, steps, o);
  const std::string name = fmt::format("{} (seed {})", sc.label, seed);
  const std::string dir = (out / "runs" / fmt::format("{}-seed{}", folder_name(sc.label), seed)).string();
  json record = run_record(config, o);
  if (o.reuse_finished) {
    if (std::optional<viz::ReportRun> done = finished_run(sc, seed, dir, record)) {
      progress.say(fmt::format("reusing finished run {} in {}", name, dir));
      return done;
    }
  }
  fresh_run_folder(dir);

  const auto t0 = Clock::now();
  nn::Trainer trainer(config, dir, false, 0, o.device);
  double last_val = std::nan("");
  trainer.run(
      [&](const nn::StepReport& r) {
        if (r.evaluated) last_val = r.val_loss / std::log(2.0);
        progress.update(fmt::format("training {}: step {}/{}, loss {:.3f} bits/byte{}, {:.1f}k tok/s", name, r.step,
                                    steps, r.loss / std::log(2.0),
                                    std::isfinite(last_val) ? fmt::format(", val {:.3f}", last_val) : "",
                                    r.tokens_per_second / 1000));
      },
      stop);
  const double train_seconds = seconds_since(t0);
  if (stop && stop->load()) {
    progress.say(fmt::format("interrupted: {} saved at step {} in {}", name, trainer.step(), dir));
    return std::nullopt;
  }
  progress.say(fmt::format("trained {}: {} steps in {}, validation {:.3f} bits/byte", name, steps,
                           nn::format_duration(train_seconds), last_val));
  const std::string inspect_dir = evaluate_and_inspect(trainer, config, dir, name, o, progress, sample);
  record["train_seconds"] = train_seconds;
  nn::write_text_file_atomic((fs::path(dir) / kRunRecord).string(), record.dump(2) + "\n");  // last: the run is finished
  return viz::ReportRun{sc.label, seed, dir, inspect_dir, train_seconds};
}

}  // namespace

StudyResult run_study(const StudyOptions& o, const std::atomic<bool>* stop) {
  validate(o);
  nn::require_device(o.device);
  const auto study_start = Clock::now();
  Progress progress;
  StudyResult result;
  const fs::path out(o.out_dir);
  fs::create_directories(out / "runs");
  auto stopped = [&]() { return stop && stop->load(); };
  const int64_t steps = study_steps(o, progress, out, stop);
  result.steps = steps;

  std::vector<viz::ReportRun> runs;
  std::vector<uint8_t> sample;  // the shared inspection sample
  for (const uint64_t seed : o.seeds) {
    for (size_t c = 0; c < o.configs.size(); ++c) {
      if (stopped()) break;
      std::optional<viz::ReportRun> run = one_run(o.configs[c], seed, steps, o, out, progress, sample, stop);
      if (!run) break;
      runs.push_back(*run);
    }
  }
  result.seconds = seconds_since(study_start);
  if (stopped()) {
    progress.finish();
    result.interrupted = true;
    return result;
  }

  progress.update("writing the report", true);
  viz::ReportOptions ro;
  ro.title = o.title;
  ro.subtitle = fmt::format("{} steps per run, batch {} x {} bytes, {} seed{}, device {}; {} in all.{}", steps,
                            o.configs[0].train.batch_size, o.configs[0].train.model.seq_len, o.seeds.size(),
                            o.seeds.size() > 1 ? "s" : "", device_name(o.device), nn::format_duration(seconds_since(study_start)),
                            o.command_line.empty() ? "" : " Command: " + o.command_line);
  result.table = viz::write_report(o.out_dir, runs, ro);
  result.report_path = (out / "report.html").string();
  result.seconds = seconds_since(study_start);
  progress.finish();
  return result;
}

}  // namespace runway::lab
