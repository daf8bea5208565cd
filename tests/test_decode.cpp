// Cached decoding gives the logits of a full forward pass, for standard and rewired
// models (absorption's running state, two_hop's stored rows) and every position
// encoding; sampling is seeded and respects top-k.
#include <catch2/catch.hpp>

#include <cmath>

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

TEST_CASE("generation is seeded; greedy decoding is deterministic; top-k 1 is greedy") {
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
