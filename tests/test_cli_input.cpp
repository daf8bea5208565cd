// Strict input through the built CLI: every numeric flag parses completely, integers are
// integers, floats are finite, values are in range; usage errors exit 2 with
// "runway: error: ..." naming the flag, runtime errors exit 1; --help shows each train
// flag's type, default and range; impossible models are refused at once; a FIFO is
// refused, never waited on; generate streams its bytes.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/test_support.h"

#ifndef RUNWAY_CLI_PATH
#error "RUNWAY_CLI_PATH must name the built runway binary (tests/CMakeLists.txt sets it)"
#endif

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using runway::testing::slurp;
using runway::testing::TempDir;

namespace {

struct Result {
  int status;  // exit code; 124 when `timeout` had to stop it
  std::string out, err;
};

// Runs the CLI under a 30-second timeout, so that a command that blocks fails instead
// of hanging the test.
Result run(const TempDir& dir, const std::string& args) {
  const std::string out = dir / "stdout.log", err = dir / "stderr.log";
  const int status =
      std::system(fmt::format("timeout 30 {} {} > '{}' 2> '{}' < /dev/null", RUNWAY_CLI_PATH, args, out, err).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

std::string corpus(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += fmt::format("Entry {}: a stitch in time saves nine.\n", i);
  runway::testing::write_bytes(dir / "corpus.txt", text);
  return dir / "corpus.txt";
}

const char* kTiny = "--n-layer 1 --n-head 2 --n-embd 16 --seq-len 16 --batch-size 2 --eval-batches 1 --warmup 1";

}  // namespace

TEST_CASE("bad flag values are usage errors: exit code 2, one line naming the flag and the value") {
  TempDir dir;
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases{
      // The issue's cases.
      {"train --out o --steps 1e3", "runway: error: --steps: '1e3' is not an integer"},
      {"train --out o --lr 3e-3x", "runway: error: --lr: '3e-3x' is not a number"},
      {"train --out o --lr nan", "runway: error: --lr: 'nan' is not a finite number"},
      {"train --out o --lr inf", "runway: error: --lr: 'inf' is not a finite number"},
      {"train --out o --n-layer 2.0", "runway: error: --n-layer: '2.0' is not an integer"},
      {"train --out o --n-layer 1000000", "runway: error: --n-layer must be in [1, 1024], got 1000000"},
      {"train --out o --steps 1 --steps 2", "runway: error: --steps was given 2 times; give it once"},
      // More of train's flags, from the table.
      {"train --out o --batch-size 0", "--batch-size must be in [1, 1048576], got 0"},
      {"train --out o --val-fraction 1", "--val-fraction must be in (0, 1), got 1"},
      {"train --out o --seed -1", "--seed must be >= 0, got -1"},
      {"train --out o --seed 18446744073709551616", "--seed: '18446744073709551616' is too large"},
      {"train --out o --steps ' 5'", "--steps: ' 5' is not an integer"},
      {"train --out o --lr ' 0.1'", "--lr: ' 0.1' is not a number"},
      {"train --out o --rewired-layers 0,x", "--rewired-layers: 'x' is not an integer"},
      {"train --out o --rewired-layers 0,,1", "--rewired-layers: '0,,1' has an empty item"},
      {"train --out o --pos sinusoidal", "--pos: 'sinusoidal' is not allowed: allowed values are rope, none, learned, alibi"},
      {"train --out o --device banana", "--device: unknown device 'banana': allowed values are cpu, cuda"},
      {"train --out o --n-layers 2", "unknown arguments: --n-layers 2 (see `runway train --help`)"},
      {"train --out o --bogus", "unknown argument: --bogus (see `runway train --help`)"},
      {"train --out o --n-layer", "--n-layer needs a value"},
      {"train --steps 3", "--out is required"},
      // The other commands' numeric flags.
      {"eval --checkpoint c --lengths 16,3x", "--lengths: '3x' is not an integer"},
      {"eval --checkpoint c --lengths 0", "--lengths must be in [1, 16777216], got 0"},
      {"eval --checkpoint c --batch-size 1.5", "--batch-size: '1.5' is not an integer"},
      {"eval --checkpoint c --passkey-lengths 64,-1", "--passkey-lengths must be in [1, 16777216], got -1"},
      {"eval --checkpoint c --max-windows -3", "--max-windows must be in [0, 1073741824], got -3"},
      {"eval --checkpoint c --seed 1e3", "--seed: '1e3' is not an integer"},
      {"eval --checkpoint c --attention-impl flash", "--attention-impl: 'flash' is not allowed: allowed values are auto, materialized, blockwise"},
      {"train --out o --attention-impl flash", "--attention-impl: 'flash' is not allowed: allowed values are auto, materialized, blockwise"},
      {"compare --config a.json --config-set s.json", "--config excludes --config-set"},
      {"generate --checkpoint c --prompt x --tokens 1e3", "--tokens: '1e3' is not an integer"},
      {"generate --checkpoint c --prompt x --temperature -0.5", "--temperature must be >= 0, got -0.5"},
      {"generate --checkpoint c --prompt x --temperature nan", "--temperature: 'nan' is not a finite number"},
      {"generate --checkpoint c --prompt x --top-k 4x", "--top-k: '4x' is not an integer"},
      {"generate --checkpoint c --prompt ''", "--prompt: the prompt is empty"},
      {"inspect --checkpoint c --depth 1.5", "--depth must be in [0, 1], got 1.5"},
      {"inspect --checkpoint c --max-len 0", "--max-len must be in [1, 16777216], got 0"},
      {"attention --q a --k b --v c --dy d --out o --beta inf", "--beta: 'inf' is not a finite number"},
      {"attention --q a --k b --v c --dy d --out o --runway-head 1.0", "--runway-head: '1.0' is not an integer"},
      {"attention --q a --k b --v c --dy d --out o --kind sparse", "--kind: 'sparse' is not allowed: allowed values are standard, rewired"},
      {"demo --minutes nan", "--minutes: 'nan' is not a finite number"},
      {"demo --minutes 0", "--minutes must be in (0, 1000000], got 0"},
      {"demo --steps 10x", "--steps: '10x' is not an integer"},
      {"demo --eval-windows 0", "--eval-windows must be in [1, 1073741824], got 0"},
      {"compare --config a.json --seeds 1,-2", "--seeds must be >= 0, got -2"},
      {"gradcheck --op no_such_op", "--op: unknown op 'no_such_op'"},
      {"", "a command is required: one of gradcheck, attention, train, eval, generate, inspect, demo, compare"},
  };
  for (const Case& c : cases) {
    INFO("runway " << c.args);
    const Result r = run(dir, c.args);
    CHECK(r.status == 2);
    CHECK_THAT(r.err, Contains(c.message) && Contains("runway: error: "));
    CHECK(r.err.find("required but received") == std::string::npos);  // CLI11's own wording, rewritten
    CHECK(r.out.empty());  // nothing ran
  }
  CHECK_FALSE(fs::exists(dir / "o"));
}

TEST_CASE("runtime errors exit 1, and a config file's float for an integer field names the file and the key") {
  TempDir dir;
  const std::string data = corpus(dir);
  runway::testing::write_bytes(dir / "float.json", R"({"n_layer": 2.0})");
  Result r = run(dir, fmt::format("train --out {} --config {} --data {}", dir / "run", dir / "float.json", data));
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Contains("runway: error: --config: " + dir / "float.json" + ": key 'n_layer' must be an integer, got 2.0"));
  runway::testing::write_bytes(dir / "range.json", R"({"lr": -1})");
  r = run(dir, fmt::format("train --out {} --config {} --data {}", dir / "run", dir / "range.json", data));
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Contains("key 'lr' must be > 0, got -1"));
  r = run(dir, fmt::format("eval --checkpoint {}", dir / "missing"));
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Contains("runway: error: checkpoint folder"));
  CHECK_FALSE(fs::exists(dir / "run"));
}

TEST_CASE("train --help shows every flag's type, default, range or allowed values and help, and exits 0") {
  TempDir dir;
  const Result r = run(dir, "train --help");
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Contains("--n-layer INT") && Contains("transformer blocks (default 2; in [1, 1024])"));
  CHECK_THAT(r.out, Contains("--lr FLOAT") && Contains("peak learning rate (default 0.003; > 0, finite)"));
  CHECK_THAT(r.out, Contains("--pos {rope,none,learned,alibi}"));
  CHECK_THAT(r.out, Contains("--rewired-layers INT,...") && Contains("(default all; each in [0, 1023])"));
  CHECK_THAT(r.out, Contains("--seed UINT"));
  CHECK_THAT(r.out, Contains("--runway-detach") && Contains("(ablation) (default false)"));
  CHECK(r.out.find("--n-head TEXT") == std::string::npos);
  const Result g = run(dir, "generate --help");
  CHECK(g.status == 0);
  CHECK_THAT(g.out, Contains("--tokens INT") && Contains("--temperature FLOAT"));
}

TEST_CASE("a model larger than the machine's memory is refused at once, before anything is written") {
  TempDir dir;
  const std::string data = corpus(dir);
  const auto t0 = std::chrono::steady_clock::now();
  const Result r = run(dir, fmt::format("train --out {} --data {} --n-layer 1024 --n-embd 65536 --n-head 1024",
                                        dir / "huge", data));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Contains("runway: error: training this model") && Contains("more than this machine's") &&
                        Contains("reduce n_layer"));
  CHECK(seconds < 10);
  CHECK_FALSE(fs::exists(dir / "huge"));
}

TEST_CASE("a FIFO or a device as an input is refused at once, never waited on") {
  TempDir dir;
  const std::string data = corpus(dir);
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases{
      {fmt::format("train --out {} --config {}", dir / "o", fifo), "is a FIFO (named pipe), not a regular file"},
      {fmt::format("train --out {} --data {} {}", dir / "o", fifo, kTiny), "is not a regular file or a folder"},
      {fmt::format("train --out {} --data /dev/zero {}", dir / "o", kTiny), "is not a regular file or a folder"},
      {fmt::format("attention --q {0} --k {0} --v {0} --dy {0} --out {1}", fifo, dir / "a"), "is a FIFO"},
      {fmt::format("compare --config {} --steps 1", fifo), "is a FIFO"},
  };
  for (const Case& c : cases) {
    INFO("runway " << c.args);
    const Result r = run(dir, c.args);
    CHECK(r.status == 1);  // 124: it blocked until `timeout` stopped it
    CHECK_THAT(r.err, Contains("runway: error: ") && Contains(c.message));
  }
  CHECK_FALSE(fs::exists(dir / "o"));
}

TEST_CASE("a checkpoint trained from a config.json of the previous version, then eval and generate limits") {
  TempDir dir;
  const std::string data = corpus(dir);
  // config.json as `runway train` wrote it before the field table (commit 0125f29), with
  // this test's corpus: it loads as a --config file and the new run writes it back the same.
  nlohmann::json old = nlohmann::json::parse(R"({"attention": "rewired", "batch_size": 2, "beta1": 0.9, "beta2": 0.95,
    "data": "corpus.txt", "eval_batches": 1, "eval_every": 100, "grad_accum": 1, "grad_clip": 1.0, "log_every": 10,
    "lr": 0.003, "min_lr_ratio": 0.1, "mix_passkey": 0.0, "mix_recall": 0.0, "n_embd": 16, "n_head": 2, "n_layer": 1,
    "parameter_count": 7408, "pos": "alibi", "recall_pairs": 6, "recall_queries": 4, "rewired_layers": [0],
    "rope_base": 10000.0, "runway_beta": 0.5, "runway_detach": false, "runway_head": 0, "runway_summary": "absorption",
    "seed": 1, "seq_len": 16, "steps": 1, "val_fraction": 0.1, "warmup": 30, "weight_decay": 0.1})");
  old["data"] = data;
  runway::testing::write_bytes(dir / "old.json", old.dump(2));
  const std::string ckpt = dir / "run";
  Result r = run(dir, fmt::format("train --out {} --config {}", ckpt, dir / "old.json"));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(slurp(ckpt + "/config.json")) == old);

  // eval: a batch whose forward pass cannot fit is refused before the model is built.
  r = run(dir, fmt::format("eval --checkpoint {} --lengths 16777216 --batch-size 1048576", ckpt));
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Contains("evaluating this model on batches of 1048576 x 16777216 bytes") &&
                        Contains("more than this machine's") && Contains("--batch-size"));
  CHECK_FALSE(fs::exists(ckpt + "/eval.json"));
  // eval --attention-impl: the same bits per byte from either kernels (rewired, ALiBi, to 8L),
  // the kernels named in the header line.
  std::vector<double> bpb;
  for (const char* impl : {"materialized", "blockwise"}) {
    r = run(dir, fmt::format("eval --checkpoint {} --lengths 16,128 --passkey-trials 0 --recall-trials 0 "
                             "--attention-impl {}", ckpt, impl));
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Contains(fmt::format("; {} kernels", impl)));
    const nlohmann::json eval = nlohmann::json::parse(slurp(ckpt + "/eval.json"));
    for (const auto& p : eval["bits_per_byte"]["points"]) bpb.push_back(p["bits_per_byte"].get<double>());
  }
  REQUIRE(bpb.size() == 4);
  CHECK(bpb[2] == Approx(bpb[0]).epsilon(1e-5));  // float32 kernels: equal to rounding
  CHECK(bpb[3] == Approx(bpb[1]).epsilon(1e-5));
  // generate: the same bytes as before streaming, prompt first, a newline last.
  r = run(dir, fmt::format("generate --checkpoint {} --prompt Entry --tokens 9 --seed 3", ckpt));
  CHECK(r.status == 0);
  CHECK(r.out.size() == 5 + 9 + 1);
  CHECK(r.out.rfind("Entry", 0) == 0);
  CHECK(r.out.back() == '\n');
  const Result again = run(dir, fmt::format("generate --checkpoint {} --prompt Entry --tokens 9 --seed 3", ckpt));
  CHECK(again.out == r.out);
}

TEST_CASE("generate prints its bytes while it is still generating") {
  TempDir dir;
  const std::string data = corpus(dir);
  const std::string ckpt = dir / "run";
  const Result trained = run(dir, fmt::format("train --out {} --data {} --steps 1 {}", ckpt, data, kTiny));
  INFO(trained.out << trained.err);
  REQUIRE(trained.status == 0);
  // A generation far longer than the test waits: the prompt and the first bytes must
  // arrive through the pipe while the process is still running.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execl(RUNWAY_CLI_PATH, RUNWAY_CLI_PATH, "generate", "--checkpoint", ckpt.c_str(), "--prompt", "Entry", "--tokens",
            "10000000", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  ::close(fds[1]);
  std::string received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (received.size() < 5 + 3 && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[64];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    received.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  const bool still_running = ::waitpid(child, &status, WNOHANG) == 0;
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  ::close(fds[0]);
  CHECK(still_running);
  CHECK(received.size() >= 5 + 3);
  CHECK(received.rfind("Entry", 0) == 0);
}
