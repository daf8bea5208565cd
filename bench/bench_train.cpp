// Training-step benchmark of the engine: forward, loss, backward, global-norm clipping
// and an AdamW step of the reference GPT (nn/gpt.h), timed step by step.
//
//   bench_train --layers 4 --width 128 --heads 4 --seq 128 --batch 16
//               --attention standard|rewired --summary absorption|two_hop
//               --steps 10 --warmup 3 --threads 2 [--dump DIR] [--device cpu|cuda]
//
// Prints one JSON line: tokens/s (from the median step), the median and every step
// time, the model FLOPs per token and the peak resident memory (VmHWM).
//
// --dump DIR writes, for bench/torch_gpt.py --check: DIR/init.safetensors (the initial
// weights with their dotted names, plus the batch "ids" and "targets"),
// DIR/grads.safetensors (the gradient of every parameter after the first backward,
// and "loss"), and DIR/step1.safetensors (the weights after the first AdamW step).
// The twin loads init, computes the same step, and compares.
//
// The PyTorch twin (bench/torch_gpt.py) prints the same JSON line, and
// bench/bench_cpu.py runs both alternately (make bench-cpu).
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "engine/threads.h"
#include "nn/gpt.h"
#include "nn/optim.h"

namespace {

using runway::Error;
using runway::Tensor;

struct Options {
  int64_t layers = 4, width = 128, heads = 4, seq = 128, batch = 16;
  bool rewired = false;
  std::string summary = "absorption";
  int steps = 10, warmup = 3, threads = 2;
  uint64_t seed = 1234;
  double lr = 1e-3, clip = 1.0;
  std::string dump;
  int64_t sgemm_peak = 0;  // > 0: measure the sgemm peak at this size instead
  runway::Device device = runway::Device::CPU;
};

[[noreturn]] void usage_error(const std::string& why) {
  throw Error(fmt::format(
      "bench_train: {}\nusage: bench_train [--layers N] [--width C] [--heads H] [--seq T] [--batch B]\n"
      "       [--attention standard|rewired] [--summary absorption|two_hop] [--steps N] [--warmup N]\n"
      "       [--threads N] [--seed N] [--lr X] [--clip X] [--dump DIR] [--sgemm-peak N] [--device cpu|cuda]",
      why));
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage_error(fmt::format("flag {} needs a value", flag));
    const std::string value = argv[++i];
    auto integer = [&](int64_t min) {
      char* end = nullptr;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || v < min)
        usage_error(fmt::format("{} must be an integer >= {}, got '{}'", flag, min, value));
      return static_cast<int64_t>(v);
    };
    auto real = [&]() {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0') usage_error(fmt::format("{} must be a number, got '{}'", flag, value));
      return v;
    };
    if (flag == "--layers") o.layers = integer(1);
    else if (flag == "--width") o.width = integer(1);
    else if (flag == "--heads") o.heads = integer(1);
    else if (flag == "--seq") o.seq = integer(1);
    else if (flag == "--batch") o.batch = integer(1);
    else if (flag == "--attention") {
      if (value != "standard" && value != "rewired")
        usage_error(fmt::format("--attention '{}': allowed values are standard, rewired", value));
      o.rewired = value == "rewired";
    } else if (flag == "--summary") {
      if (value != "absorption" && value != "two_hop")
        usage_error(fmt::format("--summary '{}': allowed values are absorption, two_hop", value));
      o.summary = value;
    } else if (flag == "--steps") o.steps = static_cast<int>(integer(1));
    else if (flag == "--warmup") o.warmup = static_cast<int>(integer(0));
    else if (flag == "--threads") o.threads = static_cast<int>(integer(1));
    else if (flag == "--seed") o.seed = static_cast<uint64_t>(integer(0));
    else if (flag == "--lr") o.lr = real();
    else if (flag == "--clip") o.clip = real();
    else if (flag == "--dump") o.dump = value;
    else if (flag == "--device") {
      if (value != "cpu" && value != "cuda") usage_error(fmt::format("--device '{}': allowed values are cpu, cuda", value));
      o.device = value == "cuda" ? runway::Device::CUDA : runway::Device::CPU;
    }
    else if (flag == "--sgemm-peak") o.sgemm_peak = integer(64);
    else usage_error(fmt::format("unknown flag '{}'", flag));
  }
  return o;
}

// A memory field of /proc/self/status in bytes ("VmHWM": peak resident set size,
// "VmRSS": current), 0 when unknown.
int64_t status_bytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(f, line))
    if (line.rfind(prefix, 0) == 0) return std::atoll(line.c_str() + prefix.size()) * 1024;
  return 0;
}

// CPU seconds (user + system, all threads) this process has used so far: on a shared
// machine a step's CPU time moves less than its wall time.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Model FLOPs per token of one training step (forward + backward), the convention
// bench/bench_cpu.py states: 6 per matmul parameter (2 forward, 4 backward), the
// tied output projection included, plus the attention products Q K^T and A V over
// the causal half (about T/2 keys per query): 4 * T/2 * C forward, twice that
// backward, per layer, i.e. 6 * L * T * C.
double flops_per_token(const runway::nn::GPTConfig& c) {
  const double C = static_cast<double>(c.n_embd), L = static_cast<double>(c.n_layer);
  const double matmul_params = L * 12.0 * C * C + static_cast<double>(c.vocab_size) * C;
  return 6.0 * matmul_params + 6.0 * L * static_cast<double>(c.seq_len) * C;
}

// The machine's float32 gemm peak at `threads` threads: an n x n x n cblas_sgemm, best
// of 10 after a warm-up, both with OpenBLAS's own threads and with the engine's split
// (one single-threaded sgemm per OpenMP thread on a slice of rows). The better of the
// two is the limit the model GFLOP/s are compared with. Prints one JSON line.
void sgemm_peak(int64_t n, int threads) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  runway::Generator gen(7);
  for (auto& v : a) v = static_cast<float>(gen.normal());
  for (auto& v : b) v = static_cast<float>(gen.normal());
  const int repeats = 10;
  auto best_of = [&](auto&& f) {
    f();
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  auto full = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  auto split = [&] {
#pragma omp parallel num_threads(threads)
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n, n, 1.0f, a.data() + r0 * n, n, b.data(), n,
                  0.0f, c.data() + r0 * n, n);
    }
  };
  runway::backend_for(runway::Device::CPU);  // its constructor makes OpenBLAS single-threaded
  double t_openblas = 1e30, t_split = 1e30;
  for (int round = 0; round < 2; ++round) {  // alternate, so both see the same machine state
    openblas_set_num_threads(threads);
    t_openblas = std::min(t_openblas, best_of(full));
    openblas_set_num_threads(1);
    t_split = std::min(t_split, best_of(split));
  }
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  const bool split_wins = t_split < t_openblas;
  fmt::print("{{\"n\": {}, \"threads\": {}, \"repeats\": {}, \"gflops\": {:.1f}, \"openblas_threads_gflops\": {:.1f}, "
             "\"omp_split_gflops\": {:.1f}, \"how\": \"{}\"}}\n",
             n, threads, repeats, flops / std::min(t_split, t_openblas) / 1e9, flops / t_openblas / 1e9, flops / t_split / 1e9,
             split_wins ? "single-threaded sgemm per OpenMP thread on a row slice"
                        : "cblas_sgemm with OpenBLAS's own threads");
}

runway::nn::GPTConfig model_config(const Options& o) {
  runway::nn::GPTConfig config;
  config.n_layer = o.layers;
  config.n_embd = o.width;
  config.n_head = o.heads;
  config.seq_len = o.seq;
  config.rewired = o.rewired;
  config.runway.summary = runway::parse_runway_summary(o.summary);
  return config;
}

void dump_tensors(const std::string& path, const std::vector<runway::nn::NamedParameter>& params,
                  std::vector<std::pair<std::string, Tensor>> extra = {},
                  const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& p : params) tensors.emplace_back(p.name, p.tensor);
  for (auto& e : extra) tensors.push_back(std::move(e));
  runway::write_safetensors(path, tensors, metadata);
}

// --dump: the initial weights and the batch, for bench/torch_gpt.py --check.
void dump_init(const Options& o, const std::vector<runway::nn::NamedParameter>& params, const Tensor& ids,
               const Tensor& targets) {
  dump_tensors(o.dump + "/init.safetensors", params, {{"ids", ids}, {"targets", targets}},
               {{"layers", std::to_string(o.layers)}, {"width", std::to_string(o.width)},
                {"heads", std::to_string(o.heads)}, {"seq", std::to_string(o.seq)},
                {"batch", std::to_string(o.batch)},
                {"attention", o.rewired ? "rewired" : "standard"}, {"summary", o.summary}});
}

// --dump: every parameter's gradient after the first backward, with the loss and norm.
void dump_grads(const Options& o, const std::vector<runway::nn::NamedParameter>& params, double loss, double norm) {
  std::vector<std::pair<std::string, Tensor>> grads;
  for (const auto& p : params) grads.emplace_back(p.name, p.tensor.grad());
  grads.emplace_back("loss", Tensor::scalar(loss, runway::DType::Float64));
  grads.emplace_back("grad_norm", Tensor::scalar(norm, runway::DType::Float64));
  runway::write_safetensors(o.dump + "/grads.safetensors", grads);
}

// Seconds of each timed step (after the warmup), whole and by phase.
struct StepTimes {
  std::vector<double> times, forward_s, backward_s, optimizer_s;  // optimizer: norm, clip, AdamW
  double first_loss = 0;
  double cpu_per_step = 0;  // CPU seconds (all threads) per timed step
};

StepTimes time_training_steps(const Options& o, runway::nn::GPT& model,
                              const std::vector<runway::nn::NamedParameter>& params, runway::nn::AdamW& optimizer,
                              const Tensor& ids_t, const Tensor& targets_t) {
  // GPU kernels run asynchronously on one stream: each phase ends with a synchronize
  // so that its time is its own (a no-op on the CPU).
  runway::Backend& backend = runway::backend_for(o.device);
  StepTimes r;
  double cpu_start = 0;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    if (step == o.warmup) cpu_start = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    optimizer.zero_grad();
    Tensor loss = model.loss(ids_t, targets_t);
    backend.synchronize();
    const auto t_forward = std::chrono::steady_clock::now();
    loss.backward();
    backend.synchronize();
    const auto t_backward = std::chrono::steady_clock::now();
    const double norm = runway::nn::global_grad_norm(params);
    if (step == 0 && !o.dump.empty()) dump_grads(o, params, loss.item(), norm);
    optimizer.step(o.lr, runway::nn::clip_scale(norm, o.clip));
    if (step == 0 && !o.dump.empty()) dump_tensors(o.dump + "/step1.safetensors", params);
    backend.synchronize();
    const auto t1 = std::chrono::steady_clock::now();
    if (step == 0) r.first_loss = loss.item();
    if (step >= o.warmup) {
      r.times.push_back(std::chrono::duration<double>(t1 - t0).count());
      r.forward_s.push_back(std::chrono::duration<double>(t_forward - t0).count());
      r.backward_s.push_back(std::chrono::duration<double>(t_backward - t_forward).count());
      r.optimizer_s.push_back(std::chrono::duration<double>(t1 - t_backward).count());
    }
  }
  r.cpu_per_step = (cpu_seconds() - cpu_start) / static_cast<double>(o.steps);
  return r;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The JSON line (bench/torch_gpt.py prints the same keys).
void print_result(const Options& o, const runway::nn::GPTConfig& config, const runway::nn::GPT& model,
                  const StepTimes& r, int64_t rss_before_model) {
  const double median = median_of(r.times);
  const double fastest = *std::min_element(r.times.begin(), r.times.end());
  const double tokens = static_cast<double>(o.batch * o.seq);
  const double fpt = flops_per_token(config);
  std::string step_list;
  for (double t : r.times) step_list += fmt::format("{}{:.5f}", step_list.empty() ? "" : ", ", t);
  fmt::print(
      "{{\"engine\": \"runway\", \"device\": \"{}\", \"layers\": {}, \"width\": {}, \"heads\": {}, \"seq\": {}, \"batch\": {}, "
      "\"attention\": \"{}\", \"summary\": \"{}\", \"threads\": {}, \"params\": {}, \"tokens_per_s\": {:.1f}, "
      "\"median_step_s\": {:.5f}, \"min_step_s\": {:.5f}, \"cpu_s_per_step\": {:.5f}, \"forward_s\": {:.5f}, \"backward_s\": {:.5f}, \"optimizer_s\": {:.5f}, \"flops_per_token\": {:.0f}, \"gflops\": {:.2f}, "
      "\"peak_rss_mb\": {:.1f}, \"base_rss_mb\": {:.1f}, \"first_loss\": {:.6f}, \"steps_s\": [{}]}}\n",
      runway::device_name(o.device), o.layers, o.width, o.heads, o.seq, o.batch, o.rewired ? "rewired" : "standard",
      o.summary, o.threads,
      model.parameter_count(), tokens / median, median, fastest, r.cpu_per_step, median_of(r.forward_s),
      median_of(r.backward_s), median_of(r.optimizer_s), fpt, fpt * tokens / median / 1e9,
      static_cast<double>(status_bytes("VmHWM")) / (1 << 20), static_cast<double>(rss_before_model) / (1 << 20),
      r.first_loss, step_list);
}

}  // namespace

int main(int argc, char** argv) {
  runway::prefer_passive_omp_wait(argv);
  try {
    runway::load_backends();
    const Options o = parse(argc, argv);
    // The engine's one thread pool is OpenMP's: the CPU backend keeps OpenBLAS
    // single-threaded and splits each gemm over the OpenMP threads itself.
    omp_set_num_threads(o.threads);
    if (o.sgemm_peak > 0) {
      sgemm_peak(o.sgemm_peak, o.threads);
      return 0;
    }

    const runway::nn::GPTConfig config = model_config(o);
    const int64_t rss_before_model = status_bytes("VmRSS");
    runway::Generator init(o.seed);
    runway::nn::GPT model(config, init);
    if (o.device == runway::Device::CUDA) {
      if (!o.dump.empty()) usage_error("--dump writes the CPU run's tensors; use it without --device cuda");
      runway::backend_for(runway::Device::CUDA);  // a clear error when there is no usable GPU
      model.to(runway::Device::CUDA);  // before the optimizer, whose moments follow the parameters
    }
    auto params = model.named_parameters();
    runway::nn::AdamW optimizer(params, runway::nn::AdamWOptions{});

    // A fixed batch of random bytes (the content does not change the cost).
    runway::Generator data(o.seed + 1);
    std::vector<int64_t> ids(o.batch * o.seq), targets(o.batch * o.seq);
    for (auto& v : ids) v = static_cast<int64_t>(data.below(256));
    for (auto& v : targets) v = static_cast<int64_t>(data.below(256));
    const Tensor ids_t = Tensor::from_indices(ids, {o.batch, o.seq}).to(o.device);
    const Tensor targets_t = Tensor::from_indices(targets, {o.batch, o.seq}).to(o.device);
    if (!o.dump.empty()) dump_init(o, params, ids_t, targets_t);

    const StepTimes times = time_training_steps(o, model, params, optimizer, ids_t, targets_t);
    print_result(o, config, model, times, rss_before_model);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
}
