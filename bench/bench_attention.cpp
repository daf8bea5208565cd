// Forward + backward time of the fused attention ops against their composite twins
// (the same math from primitive ops, gradients from the tape), float32 on the CPU.
// Variants run interleaved (A B C ... A B C ...) and each reports its median; the
// ratio columns are medians of the per-round ratios.
// Usage: bench_attention [rounds=5] [T list, default 128,256,512,1024]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

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

}  // namespace

int main(int argc, char** argv) {
  runway::prefer_passive_omp_wait(argv);
  load_backends();
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
