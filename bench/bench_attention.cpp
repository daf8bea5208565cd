// Forward + backward time of the attention ops, float32 on the CPU.
//
// bench_attention [rounds=5] [T list, default 128,256,512,1024]
//   the fused ops against their composite twins (the same math from primitive ops,
//   gradients from the tape). Variants run interleaved (A B C ... A B C ...) and each
//   reports its median; the ratio columns are medians of the per-round ratios.
//
// bench_attention --memory [--lengths 1024,2048,...] [--rounds 3] [--torch bench/torch_attention.py]
//   materialised vs blockwise kernels (standard and rewired absorption, B=1 H=4 D=32) and,
//   with --torch, the PyTorch eager twin: the peak memory of one forward + backward and the
//   median time of `rounds` more. Each cell runs in a fresh process (this program with
//   --cell, the twin with python3), so its peak resident set is its own: "peak" is the
//   growth of VmHWM over the resident set before the first forward (inputs excluded).
//   Cells whose maps alone would pass --max-map-gib (default 8; --max-torch-map-gib, default
//   2, for the twin, which holds about three times its maps) are skipped.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/ops/attention.h"
#include "engine/backend.h"
#include "engine/threads.h"
#include "engine/random.h"

using namespace runway;

namespace {

using AttnFn = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>;

double time_step(const AttnFn& f, const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& dy) {
  Tensor q = q0.detach().set_requires_grad(), k = k0.detach().set_requires_grad(), v = v0.detach().set_requires_grad();
  const auto t0 = std::chrono::steady_clock::now();
  Tensor y = f(q, k, v);
  y.backward(dy);
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(t1 - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ---- --memory: one cell per process ------------------------------------------------------

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t status_bytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + key.size()) * 1024;
  return 0;
}

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::atoll(item.c_str()));
  return out;
}

constexpr int64_t kB = 1, kH = 4, kD = 32;

// --cell KIND IMPL T ROUNDS: one forward + backward (the peak), then ROUNDS timed ones.
// KIND: standard, absorption or two_hop.
int run_cell(const std::string& kind, const std::string& impl, int64_t t, int rounds) {
  if (kind != "standard" && kind != "absorption" && kind != "two_hop") {
    fmt::print(stderr, "bench_attention --cell: unknown kind '{}': allowed values are standard, absorption, two_hop\n", kind);
    return 2;
  }
  RunwayOptions runway;
  if (kind == "two_hop") runway.summary = RunwaySummary::TwoHop;
  const AttentionOptions o = (kind == "standard" ? AttentionOptions::standard() : AttentionOptions::rewired_with(runway))
                                 .with_impl(parse_attention_impl(impl));
  Generator gen(t);
  Tensor q = Tensor::normal({kB, kH, t, kD}, 0, 1, gen), k = Tensor::normal({kB, kH, t, kD}, 0, 1, gen);
  Tensor v = Tensor::normal({kB, kH, t, kD}, 0, 1, gen), dy = Tensor::normal({kB, kH, t, kD}, 0, 1, gen);
  const AttnFn fn = [o](auto& q, auto& k, auto& v) { return causal_attention(AttentionInputs::split(q, k, v), o); };
  const int64_t base = status_bytes("VmRSS");
  time_step(fn, q, k, v, dy);
  const int64_t peak = status_bytes("VmHWM") - base;
  std::vector<double> times;
  for (int r = 0; r < rounds; ++r) times.push_back(time_step(fn, q, k, v, dy));
  fmt::print("{}\n", nlohmann::json{{"ms", median(times) * 1e3}, {"peak_bytes", peak}}.dump());
  return 0;
}

// Runs `command`, returns the JSON of its last output line (null when it failed).
nlohmann::json run_json(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return nullptr;
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  if (pclose(pipe) != 0) return nullptr;
  const size_t last = out.find_last_of('{');
  return last == std::string::npos ? nlohmann::json(nullptr) : nlohmann::json::parse(out.substr(last), nullptr, false);
}

std::string cell_text(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("ms")) return "failed";
  return fmt::format("{:.0f} ms, {:.1f} MiB", j["ms"].get<double>(), j["peak_bytes"].get<double>() / (1 << 20));
}

int memory_bench(int argc, char** argv) {
  std::vector<int64_t> lengths{1024, 2048, 4096, 8192, 16384};
  int rounds = 3;
  double max_map_gib = 8, max_torch_map_gib = 2;  // PyTorch eager keeps about 3x its maps
  std::string torch_script;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--lengths") lengths = parse_list(value);
    else if (flag == "--rounds") rounds = std::atoi(value.c_str());
    else if (flag == "--torch") torch_script = value;
    else if (flag == "--max-map-gib") max_map_gib = std::atof(value.c_str());
    else if (flag == "--max-torch-map-gib") max_torch_map_gib = std::atof(value.c_str());
    else {
      fmt::print(stderr, "bench_attention: unknown flag {}\n", flag);
      return 2;
    }
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  fmt::print("attention forward + backward, float32, B={} H={} D={}: median of {} rounds, and the peak memory of one "
             "forward + backward (growth of the peak resident set, inputs excluded), each cell in its own process\n\n",
             kB, kH, kD, rounds);
  fmt::print("| T | kind | materialized | blockwise | PyTorch eager | blockwise / materialized time |\n|---|---|---|---|---|---|\n");
  for (int64_t t : lengths)
    for (const char* kind : {"standard", "absorption"}) {
      const double map_gib = 4.0 * kB * (kH + (std::strcmp(kind, "absorption") == 0 ? 2 : 0)) * t * t / (1 << 30);
      const bool maps_fit = map_gib <= max_map_gib;
      auto cell = [&](const char* impl) {
        return run_json(fmt::format("{} --cell {} {} {} {}", self, kind, impl, t, rounds));
      };
      const nlohmann::json mat = maps_fit ? cell("materialized") : nlohmann::json(nullptr);
      const nlohmann::json blk = cell("blockwise");
      nlohmann::json twin;
      const bool torch_fits = map_gib <= max_torch_map_gib;
      if (!torch_script.empty() && torch_fits)
        twin = run_json(fmt::format("/usr/bin/python3 {} --kind {} --T {} --B {} --H {} --D {} --rounds {}", torch_script,
                                    kind, t, kB, kH, kD, rounds));
      const std::string skipped = fmt::format("skipped (maps {:.0f} GiB)", map_gib);
      const std::string ratio = mat.is_object() && blk.is_object()
                                    ? fmt::format("{:.2f}", blk["ms"].get<double>() / mat["ms"].get<double>())
                                    : "";
      fmt::print("| {} | {} | {} | {} | {} | {} |\n", t, kind, maps_fit ? cell_text(mat) : skipped, cell_text(blk),
                 torch_script.empty() ? "not run" : (torch_fits ? cell_text(twin) : skipped), ratio);
      std::fflush(stdout);
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  runway::prefer_passive_omp_wait(argv);
  load_backends();
  if (argc >= 6 && std::string(argv[1]) == "--cell") {
    // Usage errors (an unknown IMPL, a T or ROUNDS that is not a positive integer) exit 2.
    const auto positive = [](const char* text) {
      char* end = nullptr;
      const long long v = std::strtoll(text, &end, 10);
      return end != text && *end == '\0' && v > 0 ? v : 0LL;
    };
    const int64_t t = positive(argv[4]), rounds = positive(argv[5]);
    if (t == 0 || t > (1 << 20) || rounds == 0 || rounds > 100000) {
      fmt::print(stderr, "bench_attention --cell KIND IMPL T ROUNDS: T (at most 1048576) and ROUNDS (at most 100000) "
                         "must be positive integers\n");
      return 2;
    }
    try {
      parse_attention_impl(argv[3]);
    } catch (const Error& e) {
      fmt::print(stderr, "bench_attention --cell: {}\n", e.what());
      return 2;
    }
    return run_cell(argv[2], argv[3], t, static_cast<int>(rounds));
  }
  if (argc >= 2 && std::string(argv[1]) == "--memory") return memory_bench(argc, argv);
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  std::vector<int64_t> lengths{128, 256, 512, 1024};
  if (argc > 2) {
    lengths.clear();
    std::stringstream ss(argv[2]);
    std::string item;
    while (std::getline(ss, item, ',')) lengths.push_back(std::atoll(item.c_str()));
  }
  const int64_t B = 4, H = 4, D = 32;
  RunwayOptions absorption, two_hop;
  two_hop.summary = RunwaySummary::TwoHop;
  struct Variant {
    const char* name;
    AttnFn fn;
  };
  auto attend = [](const AttentionOptions& o) {
    return [o](auto& q, auto& k, auto& v) { return causal_attention(AttentionInputs::split(q, k, v), o); };
  };
  const AttentionOptions standard = AttentionOptions::standard();
  const std::vector<Variant> variants{
      {"standard", attend(standard)},
      {"absorption", attend(AttentionOptions::rewired_with(absorption))},
      {"two_hop", attend(AttentionOptions::rewired_with(two_hop))},
      {"standard twin", attend(standard.composed_from_primitives())},
      {"absorption twin", attend(AttentionOptions::rewired_with(absorption).composed_from_primitives())},
      {"two_hop twin", attend(AttentionOptions::rewired_with(two_hop).composed_from_primitives())},
  };
  fmt::print("attention forward+backward, float32, B={} H={} D={}, median of {} interleaved rounds (ms)\n\n", B, H, D, rounds);
  fmt::print("| T | standard | absorption | two_hop | standard twin | absorption twin | two_hop twin | absorption / standard | twin / fused (absorption) |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t t : lengths) {
    Generator gen(t);
    Tensor q = Tensor::normal({B, H, t, D}, 0, 1, gen), k = Tensor::normal({B, H, t, D}, 0, 1, gen);
    Tensor v = Tensor::normal({B, H, t, D}, 0, 1, gen), dy = Tensor::normal({B, H, t, D}, 0, 1, gen);
    std::vector<std::vector<double>> times(variants.size());
    for (const auto& var : variants) time_step(var.fn, q, k, v, dy);  // warm-up
    for (int r = 0; r < rounds; ++r)
      for (size_t i = 0; i < variants.size(); ++i) times[i].push_back(time_step(variants[i].fn, q, k, v, dy));
    std::vector<double> ms;
    for (auto& ts : times) ms.push_back(median(ts) * 1e3);
    // Ratios are medians of per-round ratios: the two runs of a round are adjacent in
    // time, so a noisy neighbour on a shared machine hits both.
    std::vector<double> abs_over_std, twin_over_fused;
    for (int r = 0; r < rounds; ++r) {
      abs_over_std.push_back(times[1][r] / times[0][r]);
      twin_over_fused.push_back(times[4][r] / times[1][r]);
    }
    fmt::print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n", t, ms[0], ms[1], ms[2],
               ms[3], ms[4], ms[5], median(abs_over_std), median(twin_over_fused));
  }
  return 0;
}
