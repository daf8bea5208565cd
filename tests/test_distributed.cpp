// Data-parallel training through mpirun (docs/distributed.md): N = 2 ranks train what one
// process trains, an interrupted N = 2 run resumes exactly (and on another N), a rank that
// dies or throws takes the job down within a bounded time without damaging the last
// checkpoint, and bad combinations are refused before training. Built when the build
// has MPI; every case runs tiny models on a tiny corpus and takes seconds.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "nn/train.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using runway::testing::slurp;

namespace {

// mpirun as root in CI (Open MPI refuses root without these two variables), on more
// ranks than cores (--oversubscribe), one OpenMP thread per rank (two ranks on two cores),
// shared memory without the cross-process copy that containers may forbid. Under
// `make sanitize`, LeakSanitizer would report Open MPI's own allocations left at
// MPI_Finalize as leaks of runway; leak checking is off for the ranks only.
const char* kMpiEnv =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
    "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 ASAN_OPTIONS=detect_leaks=0";

std::string mpirun_prefix(int ranks) {
  return fmt::format("{} {} --oversubscribe -np {}", kMpiEnv, RUNWAY_MPIEXEC, ranks);
}

int shell(const std::string& command, const std::string& log) {
  const int status = std::system(fmt::format("{} > {} 2>&1", command, log).c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// `runway ARGS` on one process (OMP_NUM_THREADS as the ranks: the same kernels' threading).
int run_single(const std::string& args, const std::string& log) {
  return shell(fmt::format("OMP_NUM_THREADS=1 {} {}", RUNWAY_CLI_PATH, args), log);
}

int run_mpi(int ranks, const std::string& args, const std::string& log, const std::string& env = "") {
  return shell(fmt::format("{} {} {} {}", env, mpirun_prefix(ranks), RUNWAY_CLI_PATH, args), log);
}

void write_corpus(const std::string& dir) {
  fs::create_directories(dir + "/corpus");
  std::string text;
  for (int i = 0; i < 300; ++i) text += fmt::format("Entry {}: a stitch in time saves nine, {} times.\n", i, i * 7 % 13);
  std::ofstream(dir + "/corpus/a.txt") << text;
}

const char* kTiny =
    "--n-layer 1 --n-head 2 --n-embd 16 --seq-len 16 --batch-size 4 --grad-accum 2 --eval-every 1000 --eval-batches 1 "
    "--warmup 2";

// One number of every line of a run's metrics.jsonl.
std::vector<double> metric(const std::string& run, const std::string& key) {
  std::vector<double> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line).at(key).get<double>());
  return out;
}
std::vector<double> losses(const std::string& run) { return metric(run, "loss"); }

int64_t newest_checkpoint_step(const std::string& run) {
  int64_t newest = -1;
  std::error_code ec;
  if (!fs::exists(run + "/checkpoints", ec)) return -1;
  for (const auto& e : fs::directory_iterator(run + "/checkpoints")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0) newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  return newest;
}

std::string model_file(const std::string& run) {
  return fmt::format("{}/checkpoints/step-{:08}/model.safetensors", run, newest_checkpoint_step(run));
}

// How far apart two model files are: ||a - b|| / ||a|| over all parameters as one vector
// (the returned value), and the largest such ratio of one tensor (*worst_tensor, named).
double relative_difference(const std::string& a_path, const std::string& b_path, double* worst_tensor = nullptr,
                           std::string* worst_name = nullptr) {
  const runway::SafetensorsFile a = runway::read_safetensors(a_path), b = runway::read_safetensors(b_path);
  REQUIRE(a.tensors.size() == b.tensors.size());
  std::map<std::string, runway::Tensor> by_name(b.tensors.begin(), b.tensors.end());
  double total_diff = 0, total_norm = 0, worst = 0;
  for (const auto& [name, ta] : a.tensors) {
    REQUIRE(by_name.count(name) == 1);
    const std::vector<double> va = ta.to_vector(), vb = by_name.at(name).to_vector();
    REQUIRE(va.size() == vb.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      diff += (va[i] - vb[i]) * (va[i] - vb[i]);
      norm += va[i] * va[i];
    }
    total_diff += diff;
    total_norm += norm;
    const double ratio = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
    if (ratio >= worst) {
      worst = ratio;
      if (worst_name) *worst_name = name;
    }
  }
  if (worst_tensor) *worst_tensor = worst;
  return std::sqrt(total_diff) / std::sqrt(total_norm);
}

double max_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::abs(a[i]));
  return worst;
}

}  // namespace

TEST_CASE("mpirun -np 2 trains what one process trains: losses and parameters agree to 1e-5") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const std::string common = fmt::format("train --data {}/corpus --steps 20 {}", dir, kTiny);
  REQUIRE(run_single(fmt::format("{} --out {}/one", common, dir), dir + "/one.log") == 0);
  REQUIRE(run_mpi(2, fmt::format("{} --out {}/two", common, dir), dir + "/two.log") == 0);
  const std::string log = slurp(dir + "/two.log");
  CHECK(log.find("data parallel: 2 ranks, 2 of 4 rows") != std::string::npos);
  // Rank 0 alone prints: one header, one final line.
  CHECK(log.find("runway train:") == log.rfind("runway train:"));
  CHECK(log.find("done: checkpoint of step 20") == log.rfind("done: checkpoint of step 20"));
  const std::vector<double> one = losses(dir + "/one"), two = losses(dir + "/two");
  REQUIRE(one.size() == 20);
  const double loss_difference = max_relative_difference(one, two);
  // The gradient itself (AdamW would hide a gradient off by a constant factor).
  const double grad_norm_difference =
      max_relative_difference(metric(dir + "/one", "grad_norm"), metric(dir + "/two", "grad_norm"));
  double worst_tensor = 0;
  std::string worst_name;
  const double parameter_difference =
      relative_difference(model_file(dir + "/one"), model_file(dir + "/two"), &worst_tensor, &worst_name);
  std::printf("N=1 vs N=2, 20 steps: largest relative loss difference %.3g, gradient norm %.3g; parameters ||a-b||/||a|| %.3g (the "
              "farthest tensor: %s, %.3g)\n",
              loss_difference, grad_norm_difference, parameter_difference, worst_name.c_str(), worst_tensor);
  CHECK(loss_difference <= 1e-5);
  CHECK(grad_norm_difference <= 1e-5);
  CHECK(parameter_difference <= 1e-5);
  CHECK(one.front() != one.back());  // it trained
  // N = 1 under mpirun (the flat buffer, the all-reduce of one rank, the replica checks)
  // is the single-process run bit for bit.
  REQUIRE(run_mpi(1, fmt::format("{} --out {}/one-mpi", common, dir), dir + "/one-mpi.log") == 0);
  CHECK(runway::testing::read_bytes(model_file(dir + "/one-mpi")) == runway::testing::read_bytes(model_file(dir + "/one")));
  CHECK(losses(dir + "/one-mpi") == one);
  // Only rank 0 wrote: nothing but the run's own files.
  CHECK(fs::exists(dir + "/two/config.json"));
  CHECK(nlohmann::json::parse(slurp(dir + "/two/config.json")).count("ranks") == 0);  // not part of the config
}

TEST_CASE("an N = 2 run stopped by SIGINT to mpirun resumes exactly, and resumes on N = 1") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  // mpirun answers SIGINT with SIGCONT to the ranks, SIGTERM a second later and SIGKILL
  // after another: the run must outlast that, so it is long, with a learning rate that
  // does not depend on the total number of steps (min_lr_ratio 1: constant after the
  // warmup). The interrupted run, resumed to S + 40 steps, is then compared with a run
  // of S + 40 steps from the start.
  const std::string flags = fmt::format("--data {}/corpus {} --min-lr-ratio 1", dir, kTiny);
  const std::string out = dir + "/sig";
  std::fflush(stdout);  // the child must not inherit (and write again) our buffered output
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::freopen((dir + "/sig.log").c_str(), "w", stdout);
    std::freopen((dir + "/sig.err").c_str(), "w", stderr);
    ::setpgid(0, 0);  // so the test's SIGINT reaches mpirun only, as in a script
    const std::string command =
        fmt::format("exec env {} {} train {} --steps 100000000 --out {}", mpirun_prefix(2), RUNWAY_CLI_PATH, flags, out);
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  bool stepped = false;
  for (int i = 0; i < 1200 && !stepped; ++i) {
    ::usleep(25 * 1000);
    stepped = losses(out).size() >= 3;
  }
  REQUIRE(stepped);
  ::kill(child, SIGINT);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  INFO(slurp(dir + "/sig.log") + slurp(dir + "/sig.err"));
  const int64_t saved = newest_checkpoint_step(out);
  REQUIRE(saved >= 3);
  // The run's own record of the stop (its closing line on stdout goes through mpirun,
  // which stops forwarding while it tears the job down, so the line is often lost).
  CHECK(slurp(out + "/stop.json") == fmt::format("{{\"reason\":\"SIGTERM\",\"step\":{}}}\n", saved));
  fs::copy(out, dir + "/sig-n1", fs::copy_options::recursive);
  fs::remove(dir + "/sig-n1/.lock");
  const int64_t total = saved + 40;

  // The same N: bit for bit the run that was never interrupted.
  REQUIRE(run_mpi(2, fmt::format("train --out {} --resume --steps {}", out, total), dir + "/resume.log") == 0);
  REQUIRE(run_mpi(2, fmt::format("train {} --steps {} --out {}/whole", flags, total, dir), dir + "/whole.log") == 0);
  CHECK(newest_checkpoint_step(out) == total);
  CHECK(slurp(out + "/stop.json") == fmt::format("{{\"reason\":\"done\",\"step\":{}}}\n", total));
  CHECK(runway::testing::read_bytes(model_file(out)) == runway::testing::read_bytes(model_file(dir + "/whole")));
  CHECK(losses(out) == losses(dir + "/whole"));

  // Another N (the global batch does not depend on it): the same run up to float32 sums.
  REQUIRE(run_single(fmt::format("train --out {}/sig-n1 --resume --steps {}", dir, total), dir + "/resume-n1.log") == 0);
  const double parameter_difference = relative_difference(model_file(dir + "/whole"), model_file(dir + "/sig-n1"));
  std::printf("N=2 interrupted at step %lld, resumed on N=1 to step %lld: parameters ||a-b||/||a|| %.3g\n",
              static_cast<long long>(saved), static_cast<long long>(total), parameter_difference);
  CHECK(parameter_difference <= 1e-5);
}

TEST_CASE("a rank that dies mid-run stops mpirun with an error within 60 s, and the checkpoints still load") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const auto t0 = std::chrono::steady_clock::now();
  const int code = run_mpi(2, fmt::format("train --data {}/corpus --steps 1000 --save-every 2 {} --out {}/run", dir, kTiny, dir),
                           dir + "/kill.log", "RUNWAY_FAULT_RANK=1 RUNWAY_FAULT_STEP=5 RUNWAY_FAULT_KIND=kill");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(slurp(dir + "/kill.log"));
  std::printf("rank 1 killed at step 6: mpirun exited with %d after %.1f s\n", code, seconds);
  CHECK(code != 0);
  CHECK(seconds < 60);
  CHECK(newest_checkpoint_step(dir + "/run") == 4);
  runway::nn::TrainConfig config;
  const auto model = runway::nn::load_model(dir + "/run", &config);
  CHECK(model->parameter_count() > 0);
  // ... and it resumes (rank 0's lock died with it).
  CHECK(run_single(fmt::format("train --out {}/run --resume --steps 6", dir), dir + "/after.log") == 0);
}

TEST_CASE("a rank that throws stops the job with its message, and a replica that drifts is caught") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(run_mpi(2, fmt::format("train --data {}/corpus --steps 1000 --save-every 2 {} --out {}/t", dir, kTiny, dir),
                dir + "/throw.log", "RUNWAY_FAULT_RANK=1 RUNWAY_FAULT_STEP=3 RUNWAY_FAULT_KIND=throw") != 0);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 60);
  CHECK(slurp(dir + "/throw.log").find("runway: error: rank 1 of 2: rank 1: injected fault at step 4") != std::string::npos);
  CHECK(newest_checkpoint_step(dir + "/t") == 2);

  // Rank 1 changes a parameter before step 8: the checksum at step 10 differs.
  CHECK(run_mpi(2, fmt::format("train --data {}/corpus --steps 1000 {} --out {}/p", dir, kTiny, dir), dir + "/perturb.log",
                "RUNWAY_FAULT_RANK=1 RUNWAY_FAULT_STEP=7 RUNWAY_FAULT_KIND=perturb") != 0);
  CHECK(slurp(dir + "/perturb.log").find("step 10: the parameters differ between the ranks") != std::string::npos);
}

TEST_CASE("bad combinations are refused before training: N not dividing the batch, different settings per rank") {
  const runway::testing::TempDir tmp;
  const std::string& dir = tmp.path;
  write_corpus(dir);
  const std::string tiny_b3 = "--n-layer 1 --n-head 2 --n-embd 16 --seq-len 16 --batch-size 3";
  CHECK(run_mpi(2, fmt::format("train --data {}/corpus --steps 5 {} --out {}/b3", dir, tiny_b3, dir), dir + "/b3.log") != 0);
  CHECK(slurp(dir + "/b3.log").find("the batch of 3 rows cannot be split over 2 ranks") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/b3/config.json"));

  // Open MPI's MPMD form: rank 0 and rank 1 get different learning rates.
  const std::string base = fmt::format("{} train --data {}/corpus --steps 5 {} --out {}/lr", RUNWAY_CLI_PATH, dir, kTiny, dir);
  CHECK(shell(fmt::format("{} {} --oversubscribe -np 1 {} --lr 0.01 : -np 1 {} --lr 0.02", kMpiEnv, RUNWAY_MPIEXEC, base, base),
              dir + "/lr.log") != 0);
  CHECK(slurp(dir + "/lr.log").find("rank 1 was started with other settings than rank 0: 'config.lr'") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/lr/config.json"));
}
