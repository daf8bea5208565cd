// The attention ops: fused vs composite twin (values and every input gradient),
// beta = 0 against standard attention, the runway semantics of R, and RoPE.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/backend.h"
#include "engine/fused_kernel.h"
#include "engine/ops/attention.h"
#include "engine/ops.h"
#include "engine/random.h"

using namespace runway;
using Catch::Matchers::Contains;

namespace {

Tensor randn(const Shape& s, uint64_t seed, DType dt = DType::Float64) {
  Generator g(seed);
  return Tensor::normal(s, 0, 1, g, dt);
}

struct Qkv {
  Tensor q, k, v, dy;
};

Qkv make_qkv(int64_t b, int64_t h, int64_t t, int64_t d, uint64_t seed, DType dt = DType::Float64) {
  return {randn({b, h, t, d}, seed, dt), randn({b, h, t, d}, seed + 1, dt), randn({b, h, t, d}, seed + 2, dt),
          randn({b, h, t, d}, seed + 3, dt)};
}

// Output and input gradients of f at (q, k, v) with upstream dy.
std::vector<std::vector<double>> run(const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>& f,
                                     const Qkv& in) {
  Tensor q = in.q.detach().set_requires_grad(), k = in.k.detach().set_requires_grad(),
         v = in.v.detach().set_requires_grad();
  Tensor y = f(q, k, v);
  y.backward(in.dy);
  return {y.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

// The one entry point on split inputs, and the options the tests use.
Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o, AttentionSink* sink = nullptr) {
  return causal_attention(AttentionInputs::split(q, k, v), o, sink);
}
AttentionOptions standard(bool alibi = false) { return AttentionOptions::standard().with_alibi(alibi); }
AttentionOptions rewired(const RunwayOptions& runway, bool alibi = false) {
  return AttentionOptions::rewired_with(runway).with_alibi(alibi);
}
AttentionOptions twin(const AttentionOptions& o) { return o.composed_from_primitives(); }

// max |a - b| / max(|b|, 1e-300) elementwise must stay under tol, with an absolute
// floor for values that are exactly representable zeros on one side.
void require_close(const std::vector<double>& a, const std::vector<double>& b, double rel, const char* what) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(what << "[" << i << "]: " << a[i] << " vs " << b[i]);
    REQUIRE(std::fabs(a[i] - b[i]) <= rel * std::fabs(b[i]) + 1e-14);
  }
}

}  // namespace

TEST_CASE("fused attention agrees with its composite twin in float64 (values and gradients)") {
  for (int64_t t : {1, 2, 5, 17})
    for (bool alibi : {false, true}) {
      const Qkv in = make_qkv(2, 3, t, 4, 10 + t);
      const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, standard(alibi)); }, in);
      const auto composed = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, twin(standard(alibi))); }, in);
      const char* names[] = {"y", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) require_close(fused[i], composed[i], 1e-10, names[i]);
    }
}

TEST_CASE("fused rewired attention agrees with its composite twin in float64") {
  int variant = 0;
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop})
    for (double beta : {0.0, 0.5, -0.7, 3.0})
      for (bool detach : {false, true})
        for (int64_t t : {3, 17}) {
          RunwayOptions o;
          o.summary = summary;
          o.beta = beta;
          o.detach = detach;
          o.runway_head = variant++ % 3;
          const bool alibi = variant % 4 == 0;
          const Qkv in = make_qkv(2, 3, t, 4, 100 + variant);
          INFO(runway_summary_name(summary) << " beta=" << beta << " detach=" << detach << " T=" << t
                                            << " r=" << o.runway_head << " alibi=" << alibi);
          const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
            return attend(q, k, v, rewired(o, alibi));
          }, in);
          const auto composed = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
            return attend(q, k, v, twin(rewired(o, alibi)));
          }, in);
          const char* names[] = {"y", "dq", "dk", "dv"};
          for (int i = 0; i < 4; ++i) require_close(fused[i], composed[i], 1e-10, names[i]);
        }
}

TEST_CASE("fused attention agrees with its twin across the CPU kernels' causal row blocks (T > 32)") {
  // The CPU products go in row blocks of 32 over the causal triangle: lengths at, just
  // past and well past a block boundary, standard and both rewired summaries.
  int variant = 0;
  for (int64_t t : {32, 33, 64, 65, 150})
    for (int kind = 0; kind < 3; ++kind) {
      const Qkv in = make_qkv(1, 2, t, 6, 500 + variant++);
      RunwayOptions o;
      o.summary = kind == 2 ? RunwaySummary::TwoHop : RunwaySummary::Absorption;
      o.beta = 0.8;
      o.runway_head = 1;
      const AttentionOptions how = (kind == 0 ? standard() : rewired(o)).with_alibi(t == 65);
      INFO("T=" << t << " kind=" << kind);
      const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
        return attend(q, k, v, how);
      }, in);
      const auto composed = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
        return attend(q, k, v, twin(how));
      }, in);
      const char* names[] = {"y", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) require_close(fused[i], composed[i], 1e-10, names[i]);
    }
}

TEST_CASE("fused and composite expose the same intermediates P, R, A, A'") {
  const Qkv in = make_qkv(2, 3, 9, 4, 300);
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.runway_head = 2;
    o.beta = 1.5;
    AttentionSink f, c;
    attend(in.q, in.k, in.v, rewired(o), &f);
    attend(in.q, in.k, in.v, twin(rewired(o)), &c);
    CHECK(f.p.shape() == Shape{2, 9, 9});
    CHECK(f.r.shape() == Shape{2, 9, 9});
    CHECK(f.a.shape() == Shape{2, 3, 9, 9});
    CHECK(f.a_rewired.shape() == Shape{2, 3, 9, 9});
    require_close(f.p.to_vector(), c.p.to_vector(), 1e-12, "P");
    require_close(f.r.to_vector(), c.r.to_vector(), 1e-12, "R");
    require_close(f.a.to_vector(), c.a.to_vector(), 1e-12, "A");
    require_close(f.a_rewired.to_vector(), c.a_rewired.to_vector(), 1e-12, "A'");
  }
}

TEST_CASE("beta = 0 reproduces standard attention exactly on the CPU") {
  for (DType dt : {DType::Float32, DType::Float64})
    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
      const Qkv in = make_qkv(2, 4, 33, 8, 500, dt);
      RunwayOptions o;
      o.summary = summary;
      o.beta = 0.0;
      o.runway_head = 3;
      const auto plain = run([](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, standard()); }, in);
      const auto beta0 = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, rewired(o)); }, in);
      for (int i = 0; i < 4; ++i) CHECK(beta0[i] == plain[i]);  // bit for bit
    }
}

TEST_CASE("runway coefficients follow the spec: zero off the strict runway, absorption and two_hop sums") {
  const Qkv in = make_qkv(2, 3, 12, 4, 700);
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.runway_head = 1;
    AttentionSink x;
    attend(in.q, in.k, in.v, rewired(o), &x);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < 12; ++i)
        for (int64_t j = 0; j < 12; ++j) {
          double expected = 0.0;  // empty sum unless i - j >= 2
          for (int64_t k = j + 1; k < i; ++k)
            expected += summary == RunwaySummary::Absorption ? x.p.at({b, k, j}) : x.p.at({b, i, k}) * x.p.at({b, k, j});
          if (i - j < 2) {
            CHECK(x.r.at({b, i, j}) == 0.0);
          } else {
            CHECK(x.r.at({b, i, j}) == Approx(expected).epsilon(1e-12));
          }
        }
    // P is the runway head's own (un-rewired) attention.
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < 12; ++i)
        for (int64_t j = 0; j < 12; ++j) CHECK(x.p.at({b, i, j}) == x.a.at({b, 1, i, j}));
  }
}

TEST_CASE("rewired attention rows are distributions over the causal past, for negative beta too") {
  const Qkv in = make_qkv(1, 2, 10, 4, 800);
  for (double beta : {-0.7, -5.0, 3.0}) {
    RunwayOptions o;
    o.beta = beta;
    AttentionSink x;
    Tensor y = attend(in.q, in.k, in.v, rewired(o), &x);
    for (double v : y.to_vector()) REQUIRE(std::isfinite(v));
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 10; ++i) {
        double total = 0;
        for (int64_t j = 0; j < 10; ++j) {
          if (j > i) CHECK(x.a_rewired.at({0, h, i, j}) == 0.0);
          total += x.a_rewired.at({0, h, i, j});
        }
        CHECK(total == Approx(1.0).epsilon(1e-12));
      }
  }
}

TEST_CASE("beta damps attention to tokens the runway has already absorbed") {
  // With absorption, R >= 0; a positive beta can only lower the logits of positions
  // with runway mass, so A' puts no more weight there, relative to the diagonal, than A.
  const Qkv in = make_qkv(1, 1, 8, 4, 900);
  RunwayOptions o;
  o.beta = 2.0;
  AttentionSink x;
  attend(in.q, in.k, in.v, rewired(o), &x);
  for (int64_t i = 2; i < 8; ++i)
    for (int64_t j = 0; j + 2 <= i; ++j) {
      CHECK(x.r.at({0, i, j}) > 0.0);
      const double before = x.a.at({0, 0, i, j}) / x.a.at({0, 0, i, i});
      const double after = x.a_rewired.at({0, 0, i, j}) / x.a_rewired.at({0, 0, i, i});
      CHECK(after == Approx(before * std::exp(-2.0 * x.r.at({0, i, j}))).epsilon(1e-10));
    }
}

TEST_CASE("float32 fused attention matches float64 to float32 rounding") {
  const Qkv in = make_qkv(2, 2, 64, 16, 1000);
  RunwayOptions o;
  o.summary = RunwaySummary::TwoHop;
  const auto ref = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, rewired(o)); }, in);
  const Qkv f32{in.q.to(DType::Float32), in.k.to(DType::Float32), in.v.to(DType::Float32), in.dy.to(DType::Float32)};
  const auto got = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attend(q, k, v, rewired(o)); }, f32);
  for (int i = 0; i < 4; ++i)
    for (size_t j = 0; j < ref[i].size(); ++j) REQUIRE(std::fabs(got[i][j] - ref[i][j]) <= 1e-4 + 1e-4 * std::fabs(ref[i][j]));
}

TEST_CASE("attention inputs are validated with clear messages") {
  const Qkv in = make_qkv(1, 2, 4, 3, 1100);
  RunwayOptions o;
  o.runway_head = 2;
  CHECK_THROWS_WITH(attend(in.q, in.k, in.v, rewired(o)), Contains("runway_head 2") && Contains("2 heads"));
  CHECK_THROWS_WITH(attend(in.q, randn({1, 2, 5, 3}, 1), in.v, standard()), Contains("(1, 2, 4, 3)") && Contains("(1, 2, 5, 3)"));
  CHECK_THROWS_WITH(attend(randn({2, 4, 3}, 1), randn({2, 4, 3}, 2), randn({2, 4, 3}, 3), standard()), Contains("(B, H, T, D)"));
  AttentionInputs both = AttentionInputs::split(in.q, in.k, in.v);
  both.qkv = randn({1, 4, 18}, 5);
  CHECK_THROWS_WITH(causal_attention(both, standard()), Contains("either q, k, v or the packed qkv"));
  CHECK_THROWS_WITH(attend(in.q, in.k, in.v, standard().with_rope(0.0, -1)), Contains("position offset must be >= 0"));
  CHECK_THROWS_WITH(parse_runway_summary("three_hop"), Contains("three_hop") && Contains("absorption, two_hop"));
  RunwayOptions bad;
  bad.beta = NAN;
  CHECK_THROWS_WITH(attend(in.q, in.k, in.v, rewired(bad)), Contains("finite"));
}

TEST_CASE("rope rotates pairs: norms kept, dot products depend only on the offset between positions") {
  Tensor x = randn({1, 1, 6, 8}, 1200);
  Tensor y = rope(x);
  // Position 0 is not rotated.
  for (int64_t c = 0; c < 8; ++c) CHECK(y.at({0, 0, 0, c}) == x.at({0, 0, 0, c}));
  for (int64_t t = 0; t < 6; ++t) {
    double nx = 0, ny = 0;
    for (int64_t c = 0; c < 8; ++c) {
      nx += x.at({0, 0, t, c}) * x.at({0, 0, t, c});
      ny += y.at({0, 0, t, c}) * y.at({0, 0, t, c});
    }
    CHECK(ny == Approx(nx).epsilon(1e-12));
  }
  // <rope(q, at i), rope(k, at j)> is the same for (i, j) = (3, 1) and (5, 3).
  Tensor q = randn({1, 1, 1, 8}, 1201), k = randn({1, 1, 1, 8}, 1202);
  auto score = [&](int64_t i, int64_t j) {
    return sum(mul(rope(q, 10000.0, i), rope(k, 10000.0, j))).item();
  };
  CHECK(score(3, 1) == Approx(score(5, 3)).epsilon(1e-12));
  CHECK(score(3, 1) != Approx(score(3, 2)).epsilon(1e-6));
  // An offset equals taking later positions of a longer sequence.
  Tensor long_seq = rope(randn({1, 1, 6, 8}, 1203));
  Tensor tail = rope(slice(randn({1, 1, 6, 8}, 1203), 2, 4, 6), 10000.0, 4);
  require_close(tail.to_vector(), slice(long_seq, 2, 4, 6).contiguous().to_vector(), 1e-15, "offset");
  CHECK_THROWS_WITH(rope(randn({2, 3}, 1)), Contains("D even"));
}

TEST_CASE("worked example of docs/attention.md: T=4, q = k = 0, uniform P") {
  // Every logit is 0, so the runway head attends uniformly: P[i,j] = 1/(i+1), j <= i.
  // R by hand (absorption): R[2,0] = P[1,0] = 1/2, R[3,0] = P[1,0] + P[2,0] = 5/6,
  // R[3,1] = P[2,1] = 1/3. (two_hop): R[2,0] = 1/3 * 1/2 = 1/6,
  // R[3,0] = 1/4 * 1/2 + 1/4 * 1/3 = 5/24, R[3,1] = 1/4 * 1/3 = 1/12. Elsewhere 0.
  Tensor zero = Tensor::zeros({1, 1, 4, 2}, DType::Float64);
  Tensor v = randn({1, 1, 4, 2}, 1300);
  const double abs_r[4][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0.5, 0, 0, 0}, {5.0 / 6, 1.0 / 3, 0, 0}};
  const double hop_r[4][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {1.0 / 6, 0, 0, 0}, {5.0 / 24, 1.0 / 12, 0, 0}};
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    const auto& r = summary == RunwaySummary::Absorption ? abs_r : hop_r;
    RunwayOptions o;
    o.summary = summary;
    o.beta = 1.0;
    AttentionSink x;
    Tensor y = attend(zero, zero, v, rewired(o), &x);
    for (int64_t i = 0; i < 4; ++i) {
      double z = 0;
      for (int64_t j = 0; j <= i; ++j) z += std::exp(-r[i][j]);
      for (int64_t j = 0; j < 4; ++j) {
        CHECK(x.p.at({0, i, j}) == Approx(j <= i ? 1.0 / (i + 1) : 0.0).margin(1e-15));
        CHECK(x.r.at({0, i, j}) == Approx(r[i][j]).margin(1e-15));
        CHECK(x.a_rewired.at({0, 0, i, j}) == Approx(j <= i ? std::exp(-r[i][j]) / z : 0.0).margin(1e-15));
      }
      for (int64_t c = 0; c < 2; ++c) {
        double expected = 0;
        for (int64_t j = 0; j <= i; ++j) expected += std::exp(-r[i][j]) / z * v.at({0, 0, j, c});
        CHECK(y.at({0, 0, i, c}) == Approx(expected).margin(1e-14));
      }
    }
  }
}

// The packed path (the GPT's training path) against the unfused chain it replaces: split
// the packed projection, heads, rope, attention / rewired_attention, merge. Same values
// and the same gradient of the packed input, float64 and float32, all three kinds.
TEST_CASE("packed qkv attention equals split + rope + attention + merge, values and gradient") {
  const int64_t B = 2, T = 7, H = 3, D = 4, C = H * D;
  for (DType dt : {DType::Float64, DType::Float32}) {
    for (int kind = 0; kind < 3; ++kind) {
      RunwayOptions o;
      o.summary = kind == 2 ? RunwaySummary::TwoHop : RunwaySummary::Absorption;
      o.runway_head = 1;
      const bool is_rewired = kind > 0;
      const Tensor x = randn({B, T, 3 * C}, 300 + kind, dt);
      const Tensor dy = randn({B, T, C}, 310 + kind, dt);
      auto unfused = [&](const Tensor& qkv) {
        auto parts = split(qkv, {C, C, C}, -1);
        auto heads = [&](const Tensor& t) { return permute(reshape(t, {B, T, H, D}), {0, 2, 1, 3}); };
        Tensor q = rope(heads(parts[0]), 500.0), k = rope(heads(parts[1]), 500.0), v = heads(parts[2]);
        Tensor y = attend(q, k, v, is_rewired ? rewired(o) : standard());
        return reshape(permute(y, {0, 2, 1, 3}), {B, T, C});
      };
      auto fused = [&](const Tensor& qkv) {
        return causal_attention(AttentionInputs::packed(qkv, H), (is_rewired ? rewired(o) : standard()).with_rope(500.0));
      };
      Tensor a = x.detach().set_requires_grad(true), b = x.detach().clone().set_requires_grad(true);
      Tensor ya = fused(a), yb = unfused(b);
      ya.backward(dy);
      yb.backward(dy);
      const double tol = dt == DType::Float64 ? 1e-12 : 1e-5;
      const auto va = ya.to_vector(), vb = yb.to_vector(), ga = a.grad().to_vector(), gb = b.grad().to_vector();
      REQUIRE(va.size() == vb.size());
      REQUIRE(ga.size() == gb.size());
      for (size_t i = 0; i < va.size(); ++i) CHECK(va[i] == Approx(vb[i]).margin(tol));
      for (size_t i = 0; i < ga.size(); ++i) CHECK(ga[i] == Approx(gb[i]).margin(tol));
    }
  }
}

TEST_CASE("packed attention rejects a projection that does not split into heads, naming the shapes") {
  CHECK_THROWS_WITH(causal_attention(AttentionInputs::packed(randn({2, 5, 10}, 1), 2), standard()),
                    Contains("qkv must be (B, T, 3C)") && Contains("(2, 5, 10)"));
  CHECK_THROWS_WITH(causal_attention(AttentionInputs::packed(randn({2, 5, 18}, 1), 2), standard().with_rope(10000.0)),
                    Contains("even head width"));
}

// The three implementations of the attention kernels on the same buffers: the tuned CPU
// kernels (engine/ops/attention_cpu_fast.cpp), Backend's default composed from the
// primitives (what a backend without fused attention kernels runs) and the plain-loop
// reference (engine/ops/attention.cpp). Every output and saved buffer, standard and
// rewired, at lengths with an empty runway (T = 1, 2), one runway entry (T = 3) and past
// one 32-row causal block (T = 37).
TEST_CASE("fast CPU kernels and the default composed from backend primitives equal the plain-loop reference") {
  Backend& cpu = backend_for(Device::CPU);
  struct Variant {
    const char* what;
    bool rewired, two_hop, detach, alibi;
    double beta;
    int64_t head;
  };
  const Variant variants[] = {{"standard", false, false, false, false, 0, 0},
                              {"standard alibi", false, false, false, true, 0, 0},
                              {"absorption", true, false, false, false, 1.3, 1},
                              {"two_hop alibi", true, true, false, true, -0.7, 2},
                              {"absorption detached", true, false, true, false, 0.9, 0},
                              {"two_hop beta 0", true, true, false, false, 0.0, 1}};
  for (int64_t T : {1, 2, 3, 17, 37})
    for (const Variant& c : variants) {
      INFO(c.what << " T=" << T);
      const int64_t B = 2, H = 3, D = 5, n = B * H * T * D, tt = B * H * T * T, bt = B * T * T;
      AttentionArgs a;
      a.batch = B;
      a.heads = H;
      a.seq = T;
      a.head_dim = D;
      a.scale = 1.0 / std::sqrt(static_cast<double>(D));
      if (c.alibi) a.alibi_slopes = alibi_slopes(H);
      a.rewired = c.rewired;
      a.two_hop = c.two_hop;
      a.detach = c.detach;
      a.beta = c.beta;
      a.runway_head = c.head;
      const Qkv in = make_qkv(B, H, T, D, 900 + T);
      const auto q = in.q.to_vector(), k = in.k.to_vector(), v = in.v.to_vector(), dy = in.dy.to_vector();
      struct Out {
        std::vector<double> y, attn, p, r, dq, dk, dv;
      };
      auto make = [&] {
        return Out{std::vector<double>(n), std::vector<double>(tt), std::vector<double>(bt), std::vector<double>(bt),
                   std::vector<double>(n),  std::vector<double>(n),  std::vector<double>(n)};
      };
      Out want = make(), fast = make(), composed = make();
      reference::attention_forward(a, q.data(), k.data(), v.data(), want.y.data(), want.attn.data(), want.p.data(),
                                   want.r.data());
      reference::attention_backward(a, q.data(), k.data(), v.data(), want.attn.data(), want.p.data(), dy.data(),
                                    want.dq.data(), want.dk.data(), want.dv.data());
      cpu.attention_forward(DType::Float64, a, q.data(), k.data(), v.data(), fast.y.data(), fast.attn.data(),
                            fast.p.data(), fast.r.data());
      cpu.attention_backward(DType::Float64, a, q.data(), k.data(), v.data(), fast.attn.data(), fast.p.data(),
                             dy.data(), fast.dq.data(), fast.dk.data(), fast.dv.data());
      // The kernels' defaults, composed from the primitives (engine/fused_kernel.h).
      fused_kernel<DType, const AttentionArgs&, const void*, const void*, const void*, void*, void*, void*, void*>(
          "attention_forward")
          .default_fn()(cpu, DType::Float64, a, q.data(), k.data(), v.data(), composed.y.data(), composed.attn.data(),
                        composed.p.data(), composed.r.data());
      fused_kernel<DType, const AttentionArgs&, const void*, const void*, const void*, const void*, const void*,
                   const void*, void*, void*, void*>("attention_backward")
          .default_fn()(cpu, DType::Float64, a, q.data(), k.data(), v.data(), composed.attn.data(), composed.p.data(),
                        dy.data(), composed.dq.data(), composed.dk.data(), composed.dv.data());
      for (const Out* got : {&fast, &composed}) {
        INFO((got == &fast ? "fast CPU kernels" : "default from primitives"));
        require_close(got->y, want.y, 1e-12, "y");
        require_close(got->attn, want.attn, 1e-12, "attn");
        if (c.rewired) {
          require_close(got->p, want.p, 1e-12, "p");
          require_close(got->r, want.r, 1e-12, "r");
        }
        require_close(got->dq, want.dq, 1e-11, "dq");
        require_close(got->dk, want.dk, 1e-11, "dk");
        require_close(got->dv, want.dv, 1e-11, "dv");
      }
    }
}

// Cached decoding goes through the same entry point: feeding the packed projection one
// position at a time with a cache gives, row by row, the full-sequence fused output
// (RoPE at the cache's length, ALiBi from the absolute positions, the runway state).
TEST_CASE("cached attention, one position per call, equals the full-sequence fused attention row by row") {
  const int64_t B = 2, T = 9, H = 3, D = 4, C = H * D;
  for (int kind = 0; kind < 3; ++kind) {
    RunwayOptions o;
    o.summary = kind == 2 ? RunwaySummary::TwoHop : RunwaySummary::Absorption;
    o.runway_head = 1;
    o.beta = 1.4;
    const AttentionOptions how = (kind == 0 ? standard() : rewired(o)).with_rope(100.0).with_alibi(kind != 1);
    INFO("kind " << kind);
    const Tensor qkv = randn({B, T, 3 * C}, 1300 + kind);
    const std::vector<double> full = causal_attention(AttentionInputs::packed(qkv, H), how).to_vector();
    AttentionCache cache;
    for (int64_t t = 0; t < T; ++t) {
      const Tensor row = causal_attention(AttentionInputs::packed(slice(qkv, 1, t, t + 1), H, &cache), how);
      REQUIRE(row.shape() == Shape{B, 1, C});
      REQUIRE(cache.length() == t + 1);
      const std::vector<double> got = row.to_vector();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          INFO("t=" << t << " b=" << b << " c=" << c);
          CHECK(got[b * C + c] == Approx(full[(b * T + t) * C + c]).margin(1e-12));
        }
    }
  }
  AttentionCache cache;
  CHECK_THROWS_WITH(causal_attention(AttentionInputs::packed(randn({1, 2, 3 * C}, 1), H, &cache), rewired(RunwayOptions{})),
                    Contains("one position per call"));
}
