// Cached decoding gives the logits of a full forward pass, for standard and rewired
// models (absorption's running state, two_hop's stored rows) and every position
// encoding; sampling is seeded and respects top-k.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "nn/decode.h"

using namespace runway;
using namespace runway::nn;

TEST_CASE("cached decoding reproduces the full forward's logits") {
  struct Case {
    PositionEncoding pos;
    bool rewired;
    RunwaySummary summary;
  };
  for (Case k : {Case{PositionEncoding::Rope, false, RunwaySummary::Absorption},
                 Case{PositionEncoding::Rope, true, RunwaySummary::Absorption},
                 Case{PositionEncoding::Rope, true, RunwaySummary::TwoHop},
                 Case{PositionEncoding::Alibi, true, RunwaySummary::Absorption},
                 Case{PositionEncoding::Learned, true, RunwaySummary::TwoHop},
                 Case{PositionEncoding::None, false, RunwaySummary::Absorption}}) {
    INFO(position_encoding_name(k.pos) << " rewired=" << k.rewired << " " << runway_summary_name(k.summary));
    GPTConfig c;
    c.n_layer = 2;
    c.n_head = 3;
    c.n_embd = 12;
    c.seq_len = 9;
    c.pos = k.pos;
    c.rewired = k.rewired;
    c.runway.summary = k.summary;
    c.runway.runway_head = 2;
    c.runway.beta = 2.0;
    Generator g(11);
    GPT model(c, g, DType::Float64);
    for (auto& p : model.named_parameters()) {  // sharper attention than at init
      double* d = p.tensor.data<double>();
      for (int64_t i = 0; i < p.tensor.numel(); ++i) d[i] += 0.3 * g.normal();
    }
    std::vector<int64_t> ids(2 * 9);
    for (auto& v : ids) v = static_cast<int64_t>(g.below(256));
    const Tensor full = model.forward(Tensor::from_indices(ids, {2, 9}));  // (2, 9, 256)
    Decoder dec(model, 2);
    for (int64_t t = 0; t < 9; ++t) {
      const Tensor step = dec.step(Tensor::from_indices({ids[t], ids[9 + t]}, {2, 1}));
      const auto got = step.to_vector();
      const auto want = slice(full, 1, t, t + 1).contiguous().to_vector();
      for (size_t i = 0; i < got.size(); ++i) REQUIRE(std::fabs(got[i] - want[i]) <= 1e-10 * (1 + std::fabs(want[i])));
    }
  }
}

TEST_CASE("generation is seeded, greedy decoding is deterministic, and top-k 1 is greedy") {
  GPTConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 8;
  c.rewired = true;
  Generator g(3);
  GPT model(c, g);
  Generator a(5), b(5), d(6);
  const std::string s1 = generate(model, "hello", 12, SampleOptions{1.0, 0}, a);
  CHECK(s1.size() == 12);
  CHECK(s1 == generate(model, "hello", 12, SampleOptions{1.0, 0}, b));
  const std::string greedy = generate(model, "hello", 12, SampleOptions{0.0, 0}, d);
  CHECK(greedy == generate(model, "hello", 12, SampleOptions{0.7, 1}, d));
  CHECK_THROWS_WITH(generate(model, "", 3, SampleOptions{}, d), Catch::Matchers::Contains("prompt is empty"));
}

// ---- sampling statistics -----------------------------------------------------------
//
// A model whose next-byte logits are the same chosen vector at every position: ln_f with
// weight 0 outputs its bias e_0 whatever its input, so logits = e_0 @ wte^T = column 0 of
// wte. Bytes 'a'..'e' get the logits below, every other byte -40 (a mass of ~1e-15 at
// T = 1). Draws are then independent samples of one distribution, which the test computes
// itself (softmax(logits / T), restricted to the top k and renormalised) and compares
// with the counts of N = 20000 (or 10000) seeded draws: each byte's count must be within 5 binomial
// standard deviations of N p.
namespace {

const std::vector<double> kDesignedLogits{2.0, 1.5, 1.0, 0.25, -0.5};  // bytes 'a' .. 'e'

std::vector<double> fixed_logits() {
  std::vector<double> logits(256, -40.0);
  for (size_t i = 0; i < kDesignedLogits.size(); ++i) logits['a' + i] = kDesignedLogits[i];
  return logits;
}

std::unique_ptr<GPT> fixed_logit_model() {
  GPTConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 8;
  Generator g(1);
  auto model = std::make_unique<GPT>(c, g, DType::Float64);
  const std::vector<double> logits = fixed_logits();
  double* wte = model->wte.data<double>();
  for (int64_t v = 0; v < 256; ++v) wte[v * c.n_embd] = logits[v];
  double* gamma = model->ln_f->weight.data<double>();
  double* beta = model->ln_f->bias.data<double>();
  for (int64_t i = 0; i < c.n_embd; ++i) {
    gamma[i] = 0.0;
    beta[i] = i == 0 ? 1.0 : 0.0;
  }
  return model;
}

// softmax(logits / temperature) over the top_k largest logits (all when top_k is 0).
std::vector<double> expected_distribution(double temperature, int64_t top_k) {
  const std::vector<double> logits = fixed_logits();
  std::vector<double> sorted = logits;
  std::sort(sorted.rbegin(), sorted.rend());
  const double threshold = top_k > 0 ? sorted[static_cast<size_t>(top_k - 1)] : -1e300;
  std::vector<double> p(256, 0.0);
  double total = 0;
  for (int v = 0; v < 256; ++v)
    if (logits[v] >= threshold) total += p[v] = std::exp((logits[v] - 2.0) / temperature);
  for (double& x : p) x /= total;
  return p;
}

std::vector<int64_t> sample_counts(const GPT& model, const SampleOptions& options, int64_t draws, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> counts(256, 0);
  for (int64_t done = 0; done < draws; done += 50)  // short generations keep the cache small
    for (unsigned char ch : generate(model, "a", 50, options, gen)) ++counts[ch];
  return counts;
}

void check_counts(const std::vector<int64_t>& counts, const std::vector<double>& p, int64_t draws) {
  for (int v = 0; v < 256; ++v) {
    const double mean = static_cast<double>(draws) * p[v];
    const double sd = std::sqrt(mean * (1.0 - p[v]));
    INFO("byte " << v << ": " << counts[v] << " draws, expected " << mean << " +- " << sd);
    CHECK(std::fabs(static_cast<double>(counts[v]) - mean) <= 5.0 * sd + 1e-9);
  }
}

}  // namespace

TEST_CASE("the fixed-logit model's logits are the designed vector") {
  const auto model = fixed_logit_model();
  Decoder dec(*model, 1);
  const std::vector<double> logits = fixed_logits();
  for (int64_t id : {97, 0, 255}) {
    const auto got = dec.step(Tensor::from_indices({id}, {1, 1})).to_vector();
    REQUIRE(got.size() == 256);
    for (int v = 0; v < 256; ++v) REQUIRE(got[v] == logits[v]);
  }
}

TEST_CASE("sampling at temperature T draws bytes with frequencies softmax(logits / T)") {
  const auto model = fixed_logit_model();
  const int64_t N = 20000;
  for (double T : {2.0, 0.5}) {  // flatter and sharper than the logits themselves
    INFO("temperature " << T);
    const auto counts = sample_counts(*model, SampleOptions{T, 0}, N, 17);
    const auto p = expected_distribution(T, 0);
    check_counts(counts, p, N);
    CHECK(counts['a'] + counts['b'] + counts['c'] + counts['d'] + counts['e'] == N);
  }
}

TEST_CASE("top-k sampling never leaves the k largest logits and renormalises within them") {
  const auto model = fixed_logit_model();
  const int64_t N = 20000;
  const auto counts = sample_counts(*model, SampleOptions{1.0, 3}, N, 23);
  CHECK(counts['a'] + counts['b'] + counts['c'] == N);  // never 'd', 'e' or the rest
  check_counts(counts, expected_distribution(1.0, 3), N);
  // k = 2 at T = 2: 'a' : 'b' = e^{1} : e^{0.75}.
  const auto two = sample_counts(*model, SampleOptions{2.0, 2}, N / 2, 29);
  CHECK(two['a'] + two['b'] == N / 2);
  check_counts(two, expected_distribution(2.0, 2), N / 2);
}

TEST_CASE("a low temperature concentrates the draws on the argmax") {
  const auto model = fixed_logit_model();
  // T = 0.02: the runner-up is e^{-0.5 / 0.02} = e^{-25} ~ 1e-11 times less likely.
  const auto counts = sample_counts(*model, SampleOptions{0.02, 0}, 1000, 31);
  CHECK(counts['a'] == 1000);
}
