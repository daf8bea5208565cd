// Reliability of runs on disk (docs/reliability.md): a kill at any point of a save leaves
// a folder that resumes exactly; periodic saves and SIGTERM; the non-finite guard; run
// folders with one owner; runs of the flat layout written before checkpoints/ existed.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/train.h"
#include "tests/test_support.h"
#include "tests/train_test_support.h"

using namespace runway;
using namespace runway::nn;
using runway::testing::run_losses;
using Catch::Matchers::Contains;
using runway::testing::read_bytes;
using runway::testing::slurp;
using runway::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// A corpus small enough that a run starts in milliseconds.
std::string make_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += fmt::format("Entry {}: a stitch in time saves nine.\n", i);
  const std::string path = dir + "/corpus.txt";
  runway::testing::write_bytes(path, text);
  return path;
}

std::vector<std::string> tiny_flags(const std::string& data, const std::string& eval_every = "3") {
  return {"--data", data, "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "16",
          "--batch-size", "4", "--eval-every", eval_every, "--eval-batches", "1", "--warmup", "1"};
}

TrainConfig tiny_config(const std::string& data) {
  TrainConfig c = runway::testing::tiny_train_config(data);
  c.model.rewired = false;
  c.steps = 8;
  c.warmup = 1;
  c.eval_every = 3;
  c.eval_batches = 1;
  return c;
}

// Starts the CLI with `args`, stdout and stderr to `log`; with fault > 0 the child gets
// RUNWAY_FAULT_INJECT_SAVE=fault.
pid_t spawn(const std::vector<std::string>& args, const std::string& log, int fault = 0) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    if (!std::freopen(log.c_str(), "w", stdout) || ::dup2(::fileno(stdout), 2) < 0) std::_Exit(126);
    if (fault > 0) ::setenv("RUNWAY_FAULT_INJECT_SAVE", std::to_string(fault).c_str(), 1);
    else ::unsetenv("RUNWAY_FAULT_INJECT_SAVE");
    std::vector<char*> argv{const_cast<char*>(RUNWAY_CLI_PATH)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(RUNWAY_CLI_PATH, argv.data());
    std::_Exit(127);
  }
  return child;
}

int wait_for(pid_t child) {
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  return status;
}

// Runs the CLI to the end; its exit code (-signal when a signal ended it).
int run_cli(const std::vector<std::string>& args, const std::string& log, int fault = 0) {
  const int status = wait_for(spawn(args, log, fault));
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The (step, loss) pairs of metrics.jsonl, in file order.
std::vector<std::pair<int64_t, double>> metrics_of(const std::string& run) {
  std::vector<std::pair<int64_t, double>> out;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    out.emplace_back(j.at("step").get<int64_t>(), j.at("loss").get<double>());
  }
  return out;
}

// Names under checkpoints/ that start with '.' plus top-level write_file_atomic leftovers.
std::vector<std::string> leftovers(const std::string& run) {
  std::vector<std::string> out;
  if (fs::is_directory(run + "/checkpoints"))
    for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
      if (e.path().filename().string()[0] == '.') out.push_back("checkpoints/" + e.path().filename().string());
  for (const auto& e : fs::directory_iterator(run))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) out.push_back(e.path().filename().string());
  return out;
}

// Both files of the newest checkpoint, byte for byte (the safetensors files of a step
// hold nothing but the tensors, the step and the format, so equal bytes = equal state).
void check_same_final_state(const std::string& run, const std::string& reference) {
  const CheckpointLocation a = require_checkpoint(run), b = require_checkpoint(reference);
  REQUIRE(a.step == b.step);
  CHECK(read_bytes(a.dir + "/model.safetensors") == read_bytes(b.dir + "/model.safetensors"));
  CHECK(read_bytes(a.dir + "/optimizer.safetensors") == read_bytes(b.dir + "/optimizer.safetensors"));
  CHECK(read_bytes(a.dir + "/state.json") == read_bytes(b.dir + "/state.json"));
}

// Moves the newest checkpoint's files to the top of the run folder and removes
// checkpoints/: the layout runs had before checkpoints/ existed (the same three files,
// written by the same code, at the top level).
void to_flat_layout(const std::string& run) {
  const CheckpointLocation at = require_checkpoint(run);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "state.json"})
    fs::rename(at.dir + "/" + f, run + "/" + f);
  fs::remove_all(run + "/checkpoints");
}

}  // namespace

TEST_CASE("a kill at every point of a save leaves a folder that resumes to the weights of an uninterrupted run") {
  TempDir dir;
  const auto flags = concat({"--steps", "6", "--save-every", "2"}, tiny_flags(make_corpus(dir.path)));
  const std::string reference = dir / "reference";
  REQUIRE(run_cli(concat({"train", "--out", reference}, flags), dir / "reference.log") == 0);
  REQUIRE(metrics_of(reference).size() == 6);

  int points = 0;
  int64_t newest_before = -1;  // the newest complete checkpoint after the previous kill
  for (int fault = 1;; ++fault) {
    INFO("RUNWAY_FAULT_INJECT_SAVE=" << fault);
    REQUIRE(fault < 100);
    const std::string run = dir / fmt::format("run{}", fault);
    const int code = run_cli(concat({"train", "--out", run}, flags), dir / "crash.log", fault);
    if (code == 0) break;  // past the last save point: every point was hit
    REQUIRE(code == -SIGKILL);
    REQUIRE(slurp(dir / "crash.log").find("RUNWAY_FAULT_INJECT_SAVE") != std::string::npos);
    ++points;
    // The previous complete checkpoint survives until the next one is complete.
    const auto found = find_checkpoint(run);
    const int64_t newest = found ? found->step : -1;
    CHECK(newest >= newest_before);
    newest_before = newest;
    // The folder resumes, exactly, and the resume cleans what the kill left.
    REQUIRE(run_cli({"train", "--out", run, "--resume"}, dir / "resume.log") == 0);
    check_same_final_state(run, reference);
    CHECK(metrics_of(run) == metrics_of(reference));
    CHECK(leftovers(run).empty());
    fs::remove_all(run);
  }
  // 3 saves of 3 files: the temporary folder, 3 files, the manifest, the folder's fsync,
  // the rename, the parent's fsync; the last save also prunes step 2.
  CHECK(points == 3 * 8 + 1);
  CHECK(newest_before == 6);  // the last kill came after the final rename
}

TEST_CASE("periodic saves survive SIGKILL, SIGTERM saves and exits 143, and a second writer is refused naming the pid") {
  TempDir dir;
  const auto flags = concat({"--steps", "300", "--save-every", "5"}, tiny_flags(make_corpus(dir.path), "100000"));
  const std::string reference = dir / "reference";
  REQUIRE(run_cli(concat({"train", "--out", reference}, flags), dir / "reference.log") == 0);

  SECTION("SIGKILL after a periodic save") {
    const std::string run = dir / "killed";
    const pid_t child = spawn(concat({"train", "--out", run}, flags), dir / "killed.log");
    bool saved = false;
    for (int i = 0; i < 20000 && !saved; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      saved = find_checkpoint(run).has_value();
    }
    ::kill(child, SIGKILL);
    const int status = wait_for(child);
    REQUIRE(saved);
    REQUIRE(WIFSIGNALED(status));  // killed mid-run, not finished
    const int64_t step = require_checkpoint(run).step;
    CHECK(step % 5 == 0);
    CHECK(step < 300);
    REQUIRE(run_cli({"train", "--out", run, "--resume"}, dir / "resume.log") == 0);
    CHECK(slurp(dir / "resume.log").find(fmt::format("resuming at step {}", step)) != std::string::npos);
    check_same_final_state(run, reference);
    CHECK(metrics_of(run) == metrics_of(reference));
  }
  SECTION("SIGTERM saves like Ctrl-C, and while the run lives a second writer fails at once") {
    const std::string run = dir / "terminated";
    const pid_t child = spawn(concat({"train", "--out", run}, flags), dir / "terminated.log");
    bool stepped = false;
    for (int i = 0; i < 20000 && !stepped; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      stepped = fs::exists(run + "/metrics.jsonl") && fs::file_size(run + "/metrics.jsonl") > 0;
    }
    REQUIRE(stepped);
    ::kill(child, SIGSTOP);  // holds its lock, and cannot finish meanwhile
    for (const auto& second : {std::vector<std::string>{"train", "--out", run, "--resume"},
                               concat({"train", "--out", run}, flags)}) {
      const auto t0 = std::chrono::steady_clock::now();
      CHECK(run_cli(second, dir / "second.log") == 1);
      CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
      CHECK(slurp(dir / "second.log").find(fmt::format("in use by another training (pid {})", child)) != std::string::npos);
    }
    ::kill(child, SIGTERM);
    ::kill(child, SIGCONT);
    const int status = wait_for(child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 143);
    const std::string log = slurp(dir / "terminated.log");
    CHECK(log.find("by SIGTERM: checkpoint saved") != std::string::npos);
    const int64_t step = require_checkpoint(run).step;
    CHECK(step == static_cast<int64_t>(metrics_of(run).size()));
    CHECK(step < 300);
    CHECK(slurp(run + "/stop.json") == fmt::format("{{\"reason\":\"SIGTERM\",\"step\":{}}}\n", step));
    // A session that dies leaves no stop record, rather than the previous session's.
    const pid_t killed = spawn({"train", "--out", run, "--resume"}, dir / "killed-resume.log");
    bool resumed = false;
    for (int i = 0; i < 20000 && !resumed; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      resumed = static_cast<int64_t>(metrics_of(run).size()) > step;
    }
    ::kill(killed, SIGKILL);
    wait_for(killed);
    REQUIRE(resumed);
    CHECK(!fs::exists(run + "/stop.json"));
    REQUIRE(run_cli({"train", "--out", run, "--resume"}, dir / "resume.log") == 0);
    check_same_final_state(run, reference);
    CHECK(metrics_of(run) == metrics_of(reference));
    CHECK(slurp(run + "/stop.json") == "{\"reason\":\"done\",\"step\":300}\n");
  }
}

TEST_CASE("a run folder has one owner: existing runs need --resume or --overwrite, strangers' folders are refused") {
  TempDir dir;
  const std::string data = make_corpus(dir.path);
  const TrainConfig c = tiny_config(data);
  const std::string run = dir / "run";
  {
    Trainer owner(c, run, false);
    const std::string pid = fmt::format("pid {}", ::getpid());
    CHECK_THROWS_WITH(Trainer(c, run, true), Contains("in use by another training") && Contains(pid));
    CHECK_THROWS_WITH(Trainer(c, run, false, 0, Device::CPU, true), Contains(pid));
    run_losses(owner, 2);
  }
  CHECK_THROWS_WITH(Trainer(c, run, false), Contains("already holds a run (checkpoint at step 2)") &&
                                                Contains("--resume") && Contains("--overwrite"));
  CHECK_THROWS_WITH(Trainer(c, run, true, 0, Device::CPU, true), Contains("exclude each other"));
  CHECK(require_checkpoint(run).step == 2);  // refused: nothing changed
  {
    TrainConfig other = c;
    other.seed = 7;
    Trainer replaced(other, run, false, 0, Device::CPU, true);
    CHECK_FALSE(fs::exists(run + "/checkpoints"));
    CHECK_FALSE(fs::exists(run + "/metrics.jsonl"));
    CHECK(nlohmann::json::parse(slurp(run + "/config.json")).at("seed") == 7);
  }
  // Not a run and not empty: refused, even with overwrite, and left alone.
  fs::create_directories(dir / "notes");
  runway::testing::write_bytes(dir / "notes/todo.txt", "keep me");
  for (const bool overwrite : {false, true})
    CHECK_THROWS_WITH(Trainer(c, dir / "notes", false, 0, Device::CPU, overwrite),
                      Contains("not empty and is not a run folder") && Contains("todo.txt"));
  CHECK(slurp(dir / "notes/todo.txt") == "keep me");
  fs::create_directories(dir / "empty");
  CHECK_NOTHROW(Trainer(c, dir / "empty", false));

  // The same through the CLI: runtime refusals exit 1, --resume with --overwrite is a usage error.
  const auto flags = concat({"--steps", "2"}, tiny_flags(data));
  CHECK(run_cli(concat({"train", "--out", run}, flags), dir / "again.log") == 1);
  CHECK(slurp(dir / "again.log").find("already holds a run") != std::string::npos);
  CHECK(run_cli(concat({"train", "--out", run, "--overwrite"}, flags), dir / "over.log") == 0);
  CHECK(run_cli({"train", "--out", run, "--resume", "--overwrite"}, dir / "both.log") == 2);
  CHECK(run_cli(concat({"train", "--out", dir / "notes"}, flags), dir / "notes.log") == 1);
}

TEST_CASE("a non-finite loss stops the run naming the step and the parameter, and nothing non-finite is saved or reported") {
  TempDir dir;
  const std::string data = make_corpus(dir.path);
  const std::string run = dir / "diverged";
  // lr 1e6: the loss overflows within a few steps. Saving every step, each save is checked.
  const auto flags = concat({"--steps", "50", "--lr", "1e6", "--save-every", "1"}, tiny_flags(data, "100000"));
  REQUIRE(run_cli(concat({"train", "--out", run}, flags), dir / "train.log") == 1);
  const std::string log = slurp(dir / "train.log");
  CHECK(log.find("not finite, the run diverged") != std::string::npos);
  CHECK(log.find("the first parameter whose gradient is not finite is '") != std::string::npos);
  const auto found = find_checkpoint(run);
  const int64_t last_logged = static_cast<int64_t>(metrics_of(run).size());
  CHECK(log.find(fmt::format("runway: error: step {}: the training loss is", last_logged + 1)) != std::string::npos);
  // Every checkpoint that was written holds finite weights (load_model checks them).
  REQUIRE(found.has_value());
  CHECK(found->step == last_logged);
  for (const auto& e : fs::directory_iterator(run + "/checkpoints")) {
    const SafetensorsFile file = read_safetensors(e.path().string() + "/model.safetensors");
    int64_t not_finite = 0;
    for (const auto& [name, tensor] : file.tensors)
      for (double v : tensor.to_vector()) not_finite += std::isfinite(v) ? 0 : 1;
    CHECK(not_finite == 0);
  }

  // save_checkpoint refuses a non-finite parameter and leaves the disk as it was.
  {
    Trainer t(tiny_config(data), dir / "poisoned", false);
    run_losses(t, 2);
    const NamedParameter victim = t.model().named_parameters().back();
    const_cast<float*>(victim.tensor.data<float>())[0] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(t.save_checkpoint(), Contains("not saving the checkpoint of step 2") &&
                                               Contains("'" + victim.name + "'") && Contains("not finite"));
    CHECK(require_checkpoint(dir / "poisoned").step == 2);
    CHECK(leftovers(dir / "poisoned").empty());
  }

  // Weights that are not finite do not load; finite weights whose outputs overflow are
  // not reported by eval (exit 1, no eval.json).
  const std::string flat = dir / "flat";
  {
    Trainer t(tiny_config(data), flat, false);
    run_losses(t, 1);
  }
  to_flat_layout(flat);
  const auto rewrite_weights = [&](double value) {
    SafetensorsFile f = read_safetensors(flat + "/model.safetensors");
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [name, t] : f.tensors) tensors.emplace_back(name, Tensor::full(t.shape(), value));
    write_safetensors(flat + "/model.safetensors", tensors, f.metadata);
    return f.tensors.front().first;
  };
  const std::string first = rewrite_weights(std::numeric_limits<double>::infinity());
  CHECK_THROWS_WITH(load_model(flat), Contains("'" + first + "'") && Contains("not finite"));
  const std::vector<std::string> eval{"eval", "--checkpoint", flat, "--lengths", "16", "--max-windows", "2",
                                      "--passkey-trials", "0", "--recall-trials", "0"};
  CHECK(run_cli(eval, dir / "eval-inf.log") == 1);
  rewrite_weights(1e30);  // finite, but the activations overflow
  CHECK(run_cli(eval, dir / "eval-huge.log") == 1);
  CHECK(slurp(dir / "eval-huge.log").find("not finite") != std::string::npos);
  CHECK_FALSE(fs::exists(flat + "/eval.json"));
}

TEST_CASE("runs of the flat layout (before checkpoints/) still load, evaluate and resume exactly") {
  TempDir dir;
  const std::string data = make_corpus(dir.path);
  const TrainConfig c = tiny_config(data);
  std::vector<double> straight;
  {
    Trainer t(c, dir / "straight", false);
    straight = run_losses(t);
  }
  const std::string run = dir / "old";
  std::vector<double> pieced;
  std::vector<std::vector<double>> weights_at_4;
  {
    Trainer t(c, run, false);
    pieced = run_losses(t, 4);
    for (const auto& p : t.model().named_parameters()) weights_at_4.push_back(p.tensor.to_vector());
  }
  to_flat_layout(run);
  REQUIRE(require_checkpoint(run).flat);
  auto loaded = load_model(run);
  for (size_t i = 0; i < weights_at_4.size(); ++i) CHECK(loaded->named_parameters()[i].tensor.to_vector() == weights_at_4[i]);
  REQUIRE(run_cli({"eval", "--checkpoint", run, "--lengths", "16", "--max-windows", "2", "--passkey-trials", "0",
                   "--recall-trials", "0"},
                  dir / "eval.log") == 0);
  CHECK(fs::exists(run + "/eval.json"));
  {
    Trainer t(TrainConfig{}, run, true);
    CHECK(t.step() == 4);
    const auto rest = run_losses(t);
    pieced.insert(pieced.end(), rest.begin(), rest.end());
  }
  CHECK(pieced == straight);
  // The next save moved the run to checkpoints/ and removed the superseded flat files.
  CHECK(require_checkpoint(run).step == 8);
  CHECK_FALSE(fs::exists(run + "/model.safetensors"));
  CHECK_FALSE(fs::exists(run + "/state.json"));
  CHECK(metrics_of(run).size() == 8);

  // A flat checkpoint torn between its files is still refused, naming the problem.
  {
    Trainer t(c, dir / "torn", false);
    run_losses(t, 2);
  }
  to_flat_layout(dir / "torn");
  runway::testing::write_bytes(dir / "torn/state.json",
                               R"({"step": 5, "data_rng": ["0","0","0","1"], "data_rng_has_spare": false, "data_rng_spare_bits": "0"})");
  CHECK_THROWS_WITH(Trainer(TrainConfig{}, dir / "torn", true), Contains("inconsistent") && Contains("step 5"));
}

TEST_CASE("a truncated or corrupt newest checkpoint is skipped for the previous complete one") {
  TempDir dir;
  const auto flags = concat({"--steps", "6", "--save-every", "2"}, tiny_flags(make_corpus(dir.path)));
  const std::string reference = dir / "reference";
  REQUIRE(run_cli(concat({"train", "--out", reference}, flags), dir / "reference.log") == 0);
  for (const bool truncate : {true, false}) {
    INFO((truncate ? "truncated model.safetensors" : "one byte of optimizer.safetensors changed"));
    const std::string run = dir / (truncate ? "truncated" : "flipped");
    REQUIRE(run_cli(concat({"train", "--out", run}, flags), dir / "train.log") == 0);
    const std::string newest = run + "/checkpoints/step-00000006";
    const std::string file = newest + (truncate ? "/model.safetensors" : "/optimizer.safetensors");
    if (truncate) {
      fs::resize_file(file, fs::file_size(file) - 10);
    } else {
      std::string bytes = read_bytes(file);
      bytes[bytes.size() / 2] ^= 1;
      runway::testing::write_bytes(file, bytes);
    }
    std::vector<std::string> skipped;
    const auto found = find_checkpoint(run, &skipped);
    REQUIRE(found.has_value());
    CHECK(found->step == 4);
    REQUIRE(skipped.size() == 1);
    CHECK_THAT(skipped[0], Contains("step-00000006") && Contains(truncate ? "model.safetensors has" : "checksum"));
    // Resumed from step 4, it ends where the reference ended.
    REQUIRE(run_cli({"train", "--out", run, "--resume"}, dir / "resume.log") == 0);
    CHECK(slurp(dir / "resume.log").find("skipping checkpoints/step-00000006") != std::string::npos);
    check_same_final_state(run, reference);
    CHECK(metrics_of(run) == metrics_of(reference));
  }
}

TEST_CASE("metrics.jsonl is cut back to a step, dropping a torn last line") {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  runway::testing::write_bytes(path, "{\"step\":1,\"loss\":3}\n{\"step\":2,\"loss\":2}\n{\"step\":3,\"loss\":1}\n{\"step\":4,\"lo");
  truncate_metrics(path, 2);
  CHECK(slurp(path) == "{\"step\":1,\"loss\":3}\n{\"step\":2,\"loss\":2}\n");
  runway::testing::write_bytes(path, "{\"step\":1,\"loss\":3}\n{\"step\":2,\"lo");
  truncate_metrics(path, 5);
  CHECK(slurp(path) == "{\"step\":1,\"loss\":3}\n");
}

TEST_CASE("load_model refuses a config.json that does not describe the stored weights, before allocating the model") {
  TempDir dir;
  const std::string data = make_corpus(dir.path);
  TrainConfig c = tiny_config(data);
  c.steps = 1;
  {
    Trainer t(c, dir / "run", false);
    run_losses(t);
  }
  // A model of 1024 layers of width 65536 (about 5e13 parameters, far beyond this machine)
  // beside weights of the 1-layer model: the loader must say so, not allocate.
  nlohmann::json config = nlohmann::json::parse(slurp(dir / "run/config.json"));
  config["n_layer"] = 1024;
  config["n_embd"] = 65536;
  config["n_head"] = 1;
  runway::testing::write_bytes(dir / "run/config.json", config.dump(2));
  CHECK_THROWS_WITH(load_model(dir / "run"), Contains("do not belong together") && Contains("holds"));
  // One layer more is refused the same way (a count that is merely different, not huge).
  config = nlohmann::json::parse(slurp(dir / "run/config.json"));
  config["n_layer"] = 2;
  config["n_embd"] = 16;
  config["n_head"] = 2;
  runway::testing::write_bytes(dir / "run/config.json", config.dump(2));
  CHECK_THROWS_WITH(load_model(dir / "run"), Contains("do not belong together"));
}
