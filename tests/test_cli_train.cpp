// The training commands end to end through the built CLI: train, resume, eval,
// generate, and the errors a user meets first.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using runway::testing::slurp;

namespace {

int run(const std::string& args, const std::string& log) {
  const int status = std::system(fmt::format("{} {} > {} 2>&1", RUNWAY_CLI_PATH, args, log).c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}


// A small corpus in dir/corpus.
void write_corpus(const std::string& dir) {
  fs::create_directories(dir + "/corpus");
  std::string text;
  for (int i = 0; i < 300; ++i) text += fmt::format("Entry {}: a stitch in time saves nine.\n", i);
  std::ofstream(dir + "/corpus/a.txt") << text;
  std::ofstream(dir + "/corpus/b.txt") << text.substr(0, 3000);
}

// The step of a run's newest checkpoint folder (checkpoints/step-N; docs/reliability.md).
int64_t newest_checkpoint_step(const std::string& run) {
  int64_t newest = -1;
  for (const auto& e : fs::directory_iterator(run + "/checkpoints")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0) newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  return newest;
}

const char* kTiny = "--n-layer 1 --n-head 2 --n-embd 16 --seq-len 16 --batch-size 4 --eval-every 3 --eval-batches 1 --warmup 1";

}  // namespace

TEST_CASE("train, resume, eval and generate through the CLI") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const std::string out = dir + "/run";
  REQUIRE(run(fmt::format("train --out {} --data {}/corpus --steps 3 --attention rewired --runway-summary two_hop {}", out, dir, kTiny),
              dir + "/train.log") == 0);
  const std::string log = slurp(dir + "/train.log");
  CHECK(log.find("parameters:") != std::string::npos);
  CHECK(log.find("val loss") != std::string::npos);
  for (const char* f : {"checkpoints/step-00000003/model.safetensors", "checkpoints/step-00000003/optimizer.safetensors",
                        "checkpoints/step-00000003/state.json", "config.json", "metrics.jsonl"})
    CHECK(fs::exists(out + "/" + f));
  const auto config = nlohmann::json::parse(slurp(out + "/config.json"));
  CHECK(config.at("attention") == "rewired");
  CHECK(config.at("runway_summary") == "two_hop");
  CHECK(config.at("n_embd") == 16);

  REQUIRE(run(fmt::format("train --out {} --resume --steps 5", out), dir + "/resume.log") == 0);
  CHECK(slurp(dir + "/resume.log").find("resuming at step 3") != std::string::npos);
  CHECK(nlohmann::json::parse(slurp(out + "/checkpoints/step-00000005/state.json")).at("step") == 5);

  REQUIRE(run(fmt::format("eval --checkpoint {} --lengths 16,32 --max-windows 4 --passkey-trials 0 --recall-trials 2", out),
              dir + "/eval.log") == 0);
  const auto eval = nlohmann::json::parse(slurp(out + "/eval.json"));
  CHECK(eval.dump().find("bits_per_byte") != std::string::npos);

  REQUIRE(run(fmt::format("generate --checkpoint {} --prompt Entry --tokens 7 --seed 3", out), dir + "/gen.log") == 0);
  const std::string gen = slurp(dir + "/gen.log");
  CHECK(gen.rfind("Entry", 0) == 0);
  CHECK(gen.size() == std::string("Entry").size() + 7 + 1);  // prompt + 7 bytes + newline
}

TEST_CASE("bad training input gets a clear error and a nonzero exit") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  CHECK(run(fmt::format("train --out {}/x --data {}/nothing-here --steps 1", dir, dir), dir + "/e1.log") == 1);
  CHECK(slurp(dir + "/e1.log").find("nothing-here") != std::string::npos);
  CHECK(run(fmt::format("train --out {}/x --data {}/corpus --n-head 3 --n-embd 16", dir, dir), dir + "/e2.log") == 1);
  CHECK(slurp(dir + "/e2.log").find("n_head 3") != std::string::npos);
  std::ofstream(dir + "/cfg.json") << R"({"n_layers": 2})";
  CHECK(run(fmt::format("train --out {}/x --config {}/cfg.json", dir, dir), dir + "/e3.log") == 1);
  CHECK(slurp(dir + "/e3.log").find("unknown key 'n_layers'") != std::string::npos);
  CHECK(run(fmt::format("train --out {}/x --runway-summary three_hop --data {}/corpus", dir, dir), dir + "/e4.log") == 2);  // usage
  CHECK(slurp(dir + "/e4.log").find("absorption, two_hop") != std::string::npos);
  CHECK(run(fmt::format("eval --checkpoint {}/missing", dir), dir + "/e5.log") == 1);
  CHECK(run(fmt::format("generate --checkpoint {}/missing --prompt x", dir), dir + "/e6.log") != 0);
  CHECK(slurp(dir + "/e6.log").find("config.json") != std::string::npos);
}

TEST_CASE("Ctrl-C saves a checkpoint that resumes") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const std::string out = dir + "/sig";
  const std::string data = dir + "/corpus";
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::freopen((dir + "/sig.log").c_str(), "w", stdout);
    ::execl(RUNWAY_CLI_PATH, RUNWAY_CLI_PATH, "train", "--out", out.c_str(), "--data", data.c_str(), "--steps", "1000000",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "16", "--batch-size", "2",
            "--eval-every", "1000000", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  // Wait until training has taken a step (its handler is installed by then), then interrupt.
  bool stepped = false;
  for (int i = 0; i < 600 && !stepped; ++i) {
    ::usleep(50 * 1000);
    stepped = fs::exists(out + "/metrics.jsonl") && fs::file_size(out + "/metrics.jsonl") > 0;
  }
  REQUIRE(stepped);
  ::kill(child, SIGINT);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  const int64_t saved = newest_checkpoint_step(out);
  CHECK(saved >= 1);
  CHECK(slurp(dir + "/sig.log").find(fmt::format("interrupted at step {} by SIGINT", saved)) != std::string::npos);
  CHECK(slurp(out + "/stop.json") == fmt::format("{{\"reason\":\"SIGINT\",\"step\":{}}}\n", saved));
  REQUIRE(run(fmt::format("train --out {} --resume --steps {}", out, saved + 2), dir + "/sig-resume.log") == 0);
  CHECK(newest_checkpoint_step(out) == saved + 2);
  CHECK(slurp(out + "/stop.json") == fmt::format("{{\"reason\":\"done\",\"step\":{}}}\n", saved + 2));
}

TEST_CASE("the device flag: cpu runs, and an unknown name or an unusable device is a clear error with exit code 1") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const std::string out = dir + "/dev";
  REQUIRE(run(fmt::format("train --out {} --data {}/corpus --steps 2 --device cpu {}", out, dir, kTiny), dir + "/d1.log") == 0);
  CHECK(slurp(dir + "/d1.log").find("device: cpu") != std::string::npos);
  CHECK(slurp(out + "/config.json").find("device") == std::string::npos);  // a run's choice, not the model's
  REQUIRE(run(fmt::format("train --out {} --resume --steps 3 --device cpu", out), dir + "/d2.log") == 0);
  CHECK(slurp(dir + "/d2.log").find("ignoring") == std::string::npos);  // --device is not a saved setting
  REQUIRE(run(fmt::format("eval --checkpoint {} --lengths 16 --max-windows 2 --passkey-trials 0 --recall-trials 0 --device cpu", out),
              dir + "/d3.log") == 0);
  CHECK(nlohmann::json::parse(slurp(out + "/eval.json")).at("device") == "cpu");
  REQUIRE(run(fmt::format("generate --checkpoint {} --prompt Entry --tokens 3 --device cpu", out), dir + "/d4.log") == 0);

  const std::vector<std::string> commands{
      fmt::format("train --out {}/never --data {}/corpus --steps 1 {}", dir, dir, kTiny),
      fmt::format("eval --checkpoint {}", out),
      fmt::format("generate --checkpoint {} --prompt x --tokens 1", out)};
  for (const std::string& cmd : commands) {
    INFO(cmd);
    CHECK(run(cmd + " --device banana", dir + "/bad.log") == 2);  // a usage error; an unusable device is 1
    const std::string bad = slurp(dir + "/bad.log");
    CHECK(bad.find("error: --device: unknown device 'banana': allowed values are cpu, cuda") != std::string::npos);
    if (!runway::backend_available(runway::Device::CUDA)) {
      CHECK(run(cmd + " --device cuda", dir + "/nocuda.log") == 1);
      const std::string nocuda = slurp(dir + "/nocuda.log");
      CHECK(nocuda.find("error: --device: device 'cuda' is not usable: no cuda backend: ") != std::string::npos);
      CHECK(nocuda.find("terminate") == std::string::npos);
    }
  }
  CHECK_FALSE(fs::exists(dir + "/never"));  // refused before anything was written
}
