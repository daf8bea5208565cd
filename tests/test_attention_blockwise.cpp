// Blockwise (memory-linear) attention against the materialised kernels: y, dq, dk, dv
// agree to 1e-12 relative in float64 and 1e-5 in float32, for standard, absorption and
// two_hop attention, every runway option, ALiBi, T = 1, T not a multiple of the query
// block, several blocks, up to T = 4096; the saved state is O(B H T); Auto's choice.
// (The float64 gradcheck of the blockwise kernels is the op table's *_blockwise rows.)
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops/attention.h"
#include "engine/ops/attention_blockwise.h"
#include "engine/random.h"

using namespace runway;

namespace {

struct Case {
  int64_t b, h, t, d;
  AttentionOptions options;
  DType dt = DType::Float64;
};

struct Result {
  std::vector<double> y, dq, dk, dv;
};

Result run(const Case& c, AttentionImpl impl, uint64_t seed) {
  Generator g(seed);
  const Shape s{c.b, c.h, c.t, c.d};
  Tensor q = Tensor::normal(s, 0, 1, g, c.dt).set_requires_grad();
  Tensor k = Tensor::normal(s, 0, 1, g, c.dt).set_requires_grad();
  Tensor v = Tensor::normal(s, 0, 1, g, c.dt).set_requires_grad();
  Tensor dy = Tensor::normal(s, 0, 1, g, c.dt);
  Tensor y = causal_attention(AttentionInputs::split(q, k, v), c.options.with_impl(impl));
  y.backward(dy);
  return {y.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

// max |a - b| over max |b|: relative to the tensor's scale, as float32 rounding is.
double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

void require_agree(const Case& c, double tol, uint64_t seed) {
  const Result m = run(c, AttentionImpl::Materialized, seed), w = run(c, AttentionImpl::Blockwise, seed);
  const char* names[] = {"y", "dq", "dk", "dv"};
  const std::vector<double>* mats[] = {&m.y, &m.dq, &m.dk, &m.dv};
  const std::vector<double>* blks[] = {&w.y, &w.dq, &w.dk, &w.dv};
  for (int i = 0; i < 4; ++i) {
    const double e = relative_error(*blks[i], *mats[i]);
    INFO(names[i] << ": relative error " << e << " (B=" << c.b << " H=" << c.h << " T=" << c.t << " D=" << c.d << ")");
    REQUIRE(e <= tol);
  }
}

RunwayOptions runway_options(RunwaySummary summary, double beta, int64_t head, bool detach = false) {
  RunwayOptions o;
  o.summary = summary;
  o.beta = beta;
  o.runway_head = head;
  o.detach = detach;
  return o;
}

}  // namespace

TEST_CASE("blockwise standard attention equals materialised, float64, T across query blocks") {
  uint64_t seed = 10;
  for (int64_t t : {int64_t{1}, int64_t{2}, kBlockwiseQueryBlock - 1, kBlockwiseQueryBlock, kBlockwiseQueryBlock + 1, int64_t{200}})
    for (bool alibi : {false, true})
      for (int64_t b : {1, 3}) require_agree({b, 3, t, 8, AttentionOptions::standard().with_alibi(alibi)}, 1e-12, seed += 7);
}

TEST_CASE("blockwise rewired attention equals materialised, float64, every runway option") {
  uint64_t seed = 100;
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop})
    for (int64_t t : {int64_t{1}, int64_t{3}, kBlockwiseQueryBlock + 1, int64_t{190}})
      for (double beta : {0.0, 1.3, -0.8})
        for (bool detach : {false, true})
          for (int64_t b : {1, 3}) {
            const int64_t head = (seed / 7) % 3;
            const AttentionOptions o =
                AttentionOptions::rewired_with(runway_options(summary, beta, head, detach)).with_alibi(t % 2 == 1);
            require_agree({b, 3, t, 4, o}, 1e-12, seed += 7);
          }
}

TEST_CASE("blockwise attention equals materialised, float64, at T = 1000 and 4096") {
  const AttentionOptions absorption =
      AttentionOptions::rewired_with(runway_options(RunwaySummary::Absorption, -0.6, 2)).with_alibi();
  const AttentionOptions two_hop = AttentionOptions::rewired_with(runway_options(RunwaySummary::TwoHop, 1.2, 1));
  require_agree({1, 4, 4096, 32, AttentionOptions::standard()}, 1e-12, 800);
  require_agree({1, 4, 4096, 32, absorption}, 1e-12, 801);
  require_agree({2, 4, 1000, 16, two_hop}, 1e-12, 802);
}

TEST_CASE("blockwise attention equals materialised, float32, up to T = 4096") {
  const AttentionOptions absorption = AttentionOptions::rewired_with(runway_options(RunwaySummary::Absorption, 1.0, 1));
  const AttentionOptions two_hop = AttentionOptions::rewired_with(runway_options(RunwaySummary::TwoHop, 1.0, 3));
  for (int64_t t : {1000, 4096}) {
    require_agree({1, 4, t, 32, AttentionOptions::standard(), DType::Float32}, 1e-5, 500 + t);
    require_agree({1, 4, t, 32, absorption.with_alibi(), DType::Float32}, 1e-5, 600 + t);
  }
  require_agree({2, 4, 1000, 32, two_hop, DType::Float32}, 1e-5, 700);
}

TEST_CASE("blockwise backward is deterministic: two backwards over one graph agree bit for bit") {
  const std::vector<AttentionOptions> options{
      AttentionOptions::standard().with_alibi(),
      AttentionOptions::rewired_with(runway_options(RunwaySummary::Absorption, 1.1, 1))};
  for (const AttentionOptions& o : options) {
    Generator g(3);
    Tensor q = Tensor::normal({2, 2, 150, 4}, 0, 1, g).set_requires_grad(), k = Tensor::normal({2, 2, 150, 4}, 0, 1, g).set_requires_grad(),
           v = Tensor::normal({2, 2, 150, 4}, 0, 1, g).set_requires_grad(), dy = Tensor::normal({2, 2, 150, 4}, 0, 1, g);
    Tensor y = causal_attention(AttentionInputs::split(q, k, v), o.with_impl(AttentionImpl::Blockwise));
    y.backward(dy);
    const auto first = q.grad().to_vector(), first_k = k.grad().to_vector();
    q.zero_grad();
    k.zero_grad();
    v.zero_grad();
    y.backward(dy);
    REQUIRE(q.grad().to_vector() == first);
    REQUIRE(k.grad().to_vector() == first_k);
  }
}

TEST_CASE("attention_impl: auto picks blockwise from blockwise_auto_from() positions, and never with a sink") {
  REQUIRE(parse_attention_impl("auto") == AttentionImpl::Auto);
  REQUIRE(parse_attention_impl("materialized") == AttentionImpl::Materialized);
  REQUIRE(parse_attention_impl("blockwise") == AttentionImpl::Blockwise);
  REQUIRE_THROWS_WITH(parse_attention_impl("flash"), Catch::Matchers::Contains("auto, materialized, blockwise"));
  auto op_of = [](int64_t t, AttentionImpl impl, AttentionSink* sink) {
    Generator g(1);
    Tensor q = Tensor::normal({1, 1, t, 2}, 0, 1, g).set_requires_grad();
    Tensor y = causal_attention(AttentionInputs::split(q, q, q), AttentionOptions::standard().with_impl(impl), sink);
    return std::string(y.impl()->grad_fn->name);
  };
  REQUIRE(op_of(kBlockwiseAutoFrom - 1, AttentionImpl::Auto, nullptr) == "attention");
  REQUIRE(op_of(kBlockwiseAutoFrom, AttentionImpl::Auto, nullptr) == "attention_blockwise");
  REQUIRE(op_of(5, AttentionImpl::Blockwise, nullptr) == "attention_blockwise");
  // Absorption switches at the same length on one sequence or several; two_hop on one
  // sequence never (its blockwise backward materialises that item's maps).
  RunwayOptions absorption, two_hop;
  two_hop.summary = RunwaySummary::TwoHop;
  REQUIRE(blockwise_auto_from(true, absorption, 1) == kBlockwiseAutoFrom);
  REQUIRE(blockwise_auto_from(false, two_hop, 1) == kBlockwiseAutoFrom);  // not rewired: the summary is unused
  REQUIRE(blockwise_auto_from(true, two_hop, 2) == kBlockwiseAutoFrom);
  REQUIRE(blockwise_auto_from(true, two_hop, 1) == std::numeric_limits<int64_t>::max());
  auto rewired_op_of = [](int64_t b, int64_t t, RunwaySummary summary) {
    Generator g(2);
    Tensor q = Tensor::normal({b, 2, t, 2}, 0, 1, g).set_requires_grad();
    RunwayOptions o;
    o.summary = summary;
    Tensor y = causal_attention(AttentionInputs::split(q, q, q), AttentionOptions::rewired_with(o));
    return std::string(y.impl()->grad_fn->name);
  };
  REQUIRE(rewired_op_of(1, kBlockwiseAutoFrom - 1, RunwaySummary::Absorption) == "rewired_attention");
  REQUIRE(rewired_op_of(1, kBlockwiseAutoFrom, RunwaySummary::Absorption) == "rewired_attention_blockwise");
  REQUIRE(rewired_op_of(1, kBlockwiseAutoFrom, RunwaySummary::TwoHop) == "rewired_attention");
  REQUIRE(rewired_op_of(2, kBlockwiseAutoFrom, RunwaySummary::TwoHop) == "rewired_attention_blockwise");
  AttentionSink sink;
  REQUIRE(op_of(5, AttentionImpl::Blockwise, &sink) == "attention");
  REQUIRE(sink.a_rewired.defined());
}
