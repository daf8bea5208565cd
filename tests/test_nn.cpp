// The GPT: parameter counts (rewiring adds none), names, initial loss, config
// validation, and a whole-model directional finite-difference check in float64.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "nn/gpt.h"

using namespace runway;
using namespace runway::nn;
using Catch::Matchers::Contains;

namespace {

GPTConfig tiny(PositionEncoding pos, bool rewired, RunwaySummary summary = RunwaySummary::Absorption) {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.seq_len = 6;
  c.pos = pos;
  c.rewired = rewired;
  c.runway.summary = summary;
  c.runway.runway_head = 1;
  c.runway.beta = 1.5;
  return c;
}

Tensor random_ids(int64_t b, int64_t t, uint64_t seed) {
  Generator g(seed);
  std::vector<int64_t> v(b * t);
  for (auto& x : v) x = static_cast<int64_t>(g.below(256));
  return Tensor::from_indices(v, {b, t});
}

}  // namespace

TEST_CASE("parameter count matches the formula and rewiring adds no parameters") {
  for (PositionEncoding pos : {PositionEncoding::Rope, PositionEncoding::None, PositionEncoding::Learned, PositionEncoding::Alibi}) {
    GPTConfig c = tiny(pos, false);
    c.n_embd = 16;
    Generator g1(1), g2(1);
    GPT standard(c, g1);
    c.rewired = true;
    GPT rewired(c, g2);
    const int64_t C = 16, V = 256, L = 2;
    const int64_t per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C);
    const int64_t expected = V * C + L * per_block + 2 * C + (pos == PositionEncoding::Learned ? c.seq_len * C : 0);
    CHECK(standard.parameter_count() == expected);
    CHECK(rewired.parameter_count() == standard.parameter_count());
  }
}

TEST_CASE("parameters have dotted names and only matmul weights decay") {
  Generator g(2);
  GPT model(tiny(PositionEncoding::Learned, true), g);
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters()) {
    names.push_back(p.name);
    const bool is_embedding = p.name.rfind("wte", 0) == 0 || p.name.rfind("wpe", 0) == 0;
    const bool is_matmul_weight = p.name.find(".weight") != std::string::npos && p.name.find("ln_") == std::string::npos && !is_embedding;
    CHECK(p.decay == is_matmul_weight);
    CHECK(p.tensor.requires_grad());
  }
  CHECK(names.front() == "wte.weight");
  CHECK(std::find(names.begin(), names.end(), "wpe.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "blocks.1.attn.qkv.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "blocks.0.mlp.proj.bias") != names.end());
  CHECK(std::find(names.begin(), names.end(), "ln_f.weight") != names.end());
}

TEST_CASE("the same seed gives the same model, and the initial loss is near uniform (8 bits per byte)") {
  Generator g1(3), g2(3);
  GPT a(tiny(PositionEncoding::Rope, true), g1), b(tiny(PositionEncoding::Rope, true), g2);
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  for (size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].tensor.to_vector() == pb[i].tensor.to_vector());
  Tensor ids = random_ids(2, 6, 4), targets = random_ids(2, 6, 5);
  Tensor logits = a.forward(ids);
  CHECK(logits.shape() == Shape{2, 6, 256});
  CHECK(a.loss(ids, targets).item() == Approx(std::log(256.0)).margin(0.05));
}

TEST_CASE("invalid configs are rejected naming the field and the allowed values") {
  GPTConfig c = tiny(PositionEncoding::Rope, true);
  c.n_head = 3;
  CHECK_THROWS_WITH(c.validate(), Contains("n_head 3") && Contains("n_embd 8"));
  c = tiny(PositionEncoding::Rope, true);
  c.runway.runway_head = 2;
  CHECK_THROWS_WITH(c.validate(), Contains("runway_head 2") && Contains("0..1"));
  c = tiny(PositionEncoding::Rope, false);
  c.n_layer = 0;
  CHECK_THROWS_WITH(c.validate(), Contains("n_layer") && Contains("positive"));
  c = tiny(PositionEncoding::Rope, true);
  c.rewired_layers = {2};
  CHECK_THROWS_WITH(c.validate(), Contains("rewired_layers") && Contains("0..1"));
  CHECK_THROWS_WITH(parse_position_encoding("sinusoidal"), Contains("rope, none, learned, alibi"));
  Generator g(1);
  GPT learned(tiny(PositionEncoding::Learned, false), g);
  CHECK_THROWS_WITH(learned.forward(random_ids(1, 7, 1)), Contains("T = 7") && Contains("6 learned positions"));
}

TEST_CASE("rewired_layers rewires only the listed layers") {
  GPTConfig c = tiny(PositionEncoding::Rope, true);
  c.rewired_layers = {1};
  Generator g(6);
  GPT model(c, g);
  CHECK_FALSE(model.blocks[0]->attn->rewired);
  CHECK(model.blocks[1]->attn->rewired);
  std::vector<AttentionTrace> traces;
  model.forward(random_ids(1, 6, 7), &traces);
  REQUIRE(traces.size() == 2);
  CHECK_FALSE(traces[0].maps.r.defined());
  CHECK(traces[1].maps.r.shape() == Shape{1, 6, 6});
  CHECK(traces[0].maps.a_rewired.shape() == Shape{1, 2, 6, 6});
}

TEST_CASE("whole-model gradients match directional finite differences in float64") {
  struct Case {
    PositionEncoding pos;
    bool rewired;
    RunwaySummary summary;
  };
  for (Case k : {Case{PositionEncoding::Rope, false, RunwaySummary::Absorption},
                 Case{PositionEncoding::Rope, true, RunwaySummary::Absorption},
                 Case{PositionEncoding::Learned, true, RunwaySummary::TwoHop},
                 Case{PositionEncoding::Alibi, true, RunwaySummary::Absorption},
                 Case{PositionEncoding::None, false, RunwaySummary::Absorption}}) {
    INFO(position_encoding_name(k.pos) << " rewired=" << k.rewired);
    Generator g(8);
    GPT model(tiny(k.pos, k.rewired, k.summary), g, DType::Float64);
    // Larger weights than at init, so attention patterns and the runway are far from uniform.
    for (auto& p : model.named_parameters()) {
      double* d = p.tensor.data<double>();
      for (int64_t i = 0; i < p.tensor.numel(); ++i) d[i] += 0.3 * g.normal();
    }
    Tensor ids = random_ids(2, 6, 9), targets = random_ids(2, 6, 10);
    model.loss(ids, targets).backward();
    for (int trial = 0; trial < 2; ++trial) {
      std::vector<std::vector<double>> dirs;
      double analytic = 0;
      for (auto& p : model.named_parameters()) {
        std::vector<double> v(p.tensor.numel());
        for (auto& x : v) x = g.normal();
        const auto grad = p.tensor.grad().to_vector();
        for (size_t i = 0; i < v.size(); ++i) analytic += grad[i] * v[i];
        dirs.push_back(v);
      }
      auto shifted_loss = [&](double eps) {
        auto params = model.named_parameters();
        for (size_t n = 0; n < params.size(); ++n) {
          double* d = params[n].tensor.data<double>();
          for (size_t i = 0; i < dirs[n].size(); ++i) d[i] += eps * dirs[n][i];
        }
        NoGradGuard no_grad;
        const double l = model.loss(ids, targets).item();
        for (size_t n = 0; n < params.size(); ++n) {
          double* d = params[n].tensor.data<double>();
          for (size_t i = 0; i < dirs[n].size(); ++i) d[i] -= eps * dirs[n][i];
        }
        return l;
      };
      const double numeric = (shifted_loss(1e-6) - shifted_loss(-1e-6)) / 2e-6;
      CHECK(std::fabs(analytic - numeric) <= 1e-5 + 1e-3 * std::fabs(numeric));
    }
  }
}

namespace {
// The names of every op on the tape behind t.
std::set<std::string> tape_ops(const Tensor& t) {
  std::set<std::string> names;
  std::vector<std::shared_ptr<Node>> todo;
  std::set<const Node*> seen;
  if (t.impl()->grad_fn) todo.push_back(t.impl()->grad_fn);
  while (!todo.empty()) {
    std::shared_ptr<Node> n = todo.back();
    todo.pop_back();
    if (!seen.insert(n.get()).second) continue;
    names.insert(n->name);
    for (const auto& in : n->inputs)
      if (in && in->grad_fn) todo.push_back(in->grad_fn);
  }
  return names;
}
}  // namespace

TEST_CASE("attention_impl: the model's layers run the chosen kernels, with the same logits") {
  Generator g(3);
  GPT model(tiny(PositionEncoding::Rope, true), g, DType::Float64);
  const Tensor ids = random_ids(2, 6, 4);
  model.set_attention_impl(AttentionImpl::Materialized);
  const Tensor a = model.forward(ids);
  CHECK(tape_ops(a).count("qkv_attention") == 1);
  CHECK(tape_ops(a).count("qkv_attention_blockwise") == 0);
  model.set_attention_impl(AttentionImpl::Blockwise);
  CHECK(model.config.attention_impl == AttentionImpl::Blockwise);
  const Tensor b = model.forward(ids);
  CHECK(tape_ops(b).count("qkv_attention_blockwise") == 1);
  CHECK(tape_ops(b).count("qkv_attention") == 0);
  const auto va = a.to_vector(), vb = b.to_vector();
  REQUIRE(va.size() == vb.size());
  for (size_t i = 0; i < va.size(); ++i) CHECK(vb[i] == Approx(va[i]).epsilon(1e-12));
}
