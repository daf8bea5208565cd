// The attention ops: fused vs composite twin (values and every input gradient),
// beta = 0 against standard attention, the runway semantics of R, and RoPE.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/attention.h"
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
      const auto slopes = alibi ? alibi_slopes(3) : std::vector<double>{};
      const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attention(q, k, v, slopes); }, in);
      const auto twin = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return attention_composite(q, k, v, slopes); }, in);
      const char* names[] = {"y", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) require_close(fused[i], twin[i], 1e-10, names[i]);
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
          const auto slopes = variant % 4 == 0 ? alibi_slopes(3) : std::vector<double>{};
          const Qkv in = make_qkv(2, 3, t, 4, 100 + variant);
          INFO(runway_summary_name(summary) << " beta=" << beta << " detach=" << detach << " T=" << t
                                            << " r=" << o.runway_head << " alibi=" << !slopes.empty());
          const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
            return rewired_attention(q, k, v, o, nullptr, slopes);
          }, in);
          const auto twin = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
            return rewired_attention_composite(q, k, v, o, nullptr, slopes);
          }, in);
          const char* names[] = {"y", "dq", "dk", "dv"};
          for (int i = 0; i < 4; ++i) require_close(fused[i], twin[i], 1e-10, names[i]);
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
      const auto slopes = t == 65 ? alibi_slopes(2) : std::vector<double>{};
      INFO("T=" << t << " kind=" << kind);
      const auto fused = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
        return kind == 0 ? attention(q, k, v, slopes) : rewired_attention(q, k, v, o, nullptr, slopes);
      }, in);
      const auto twin = run([&](const Tensor& q, const Tensor& k, const Tensor& v) {
        return kind == 0 ? attention_composite(q, k, v, slopes) : rewired_attention_composite(q, k, v, o, nullptr, slopes);
      }, in);
      const char* names[] = {"y", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) require_close(fused[i], twin[i], 1e-10, names[i]);
    }
}

TEST_CASE("fused and composite expose the same intermediates P, R, A, A'") {
  const Qkv in = make_qkv(2, 3, 9, 4, 300);
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.runway_head = 2;
    o.beta = 1.5;
    RewiredIntermediates f, c;
    rewired_attention(in.q, in.k, in.v, o, &f);
    rewired_attention_composite(in.q, in.k, in.v, o, &c);
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
      const auto standard = run([](const Tensor& q, const Tensor& k, const Tensor& v) { return attention(q, k, v); }, in);
      const auto rewired = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return rewired_attention(q, k, v, o); }, in);
      for (int i = 0; i < 4; ++i) CHECK(rewired[i] == standard[i]);  // bit for bit
    }
}

TEST_CASE("runway coefficients follow the spec: zero off the strict runway, absorption and two_hop sums") {
  const Qkv in = make_qkv(2, 3, 12, 4, 700);
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.runway_head = 1;
    RewiredIntermediates x;
    rewired_attention(in.q, in.k, in.v, o, &x);
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
    RewiredIntermediates x;
    Tensor y = rewired_attention(in.q, in.k, in.v, o, &x);
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
  RewiredIntermediates x;
  rewired_attention(in.q, in.k, in.v, o, &x);
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
  const auto ref = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return rewired_attention(q, k, v, o); }, in);
  const Qkv f32{in.q.to(DType::Float32), in.k.to(DType::Float32), in.v.to(DType::Float32), in.dy.to(DType::Float32)};
  const auto got = run([&](const Tensor& q, const Tensor& k, const Tensor& v) { return rewired_attention(q, k, v, o); }, f32);
  for (int i = 0; i < 4; ++i)
    for (size_t j = 0; j < ref[i].size(); ++j) REQUIRE(std::fabs(got[i][j] - ref[i][j]) <= 1e-4 + 1e-4 * std::fabs(ref[i][j]));
}

TEST_CASE("attention inputs are validated with clear messages") {
  const Qkv in = make_qkv(1, 2, 4, 3, 1100);
  RunwayOptions o;
  o.runway_head = 2;
  CHECK_THROWS_WITH(rewired_attention(in.q, in.k, in.v, o), Contains("runway_head 2") && Contains("2 heads"));
  CHECK_THROWS_WITH(attention(in.q, randn({1, 2, 5, 3}, 1), in.v), Contains("(1, 2, 4, 3)") && Contains("(1, 2, 5, 3)"));
  CHECK_THROWS_WITH(attention(in.q, in.k, in.v, {0.5}), Contains("1 ALiBi slopes for 2 heads"));
  CHECK_THROWS_WITH(attention(randn({2, 4, 3}, 1), randn({2, 4, 3}, 2), randn({2, 4, 3}, 3)), Contains("(B, H, T, D)"));
  CHECK_THROWS_WITH(parse_runway_summary("three_hop"), Contains("three_hop") && Contains("absorption, two_hop"));
  RunwayOptions bad;
  bad.beta = NAN;
  CHECK_THROWS_WITH(rewired_attention(in.q, in.k, in.v, bad), Contains("finite"));
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
    RewiredIntermediates x;
    Tensor y = rewired_attention(zero, zero, v, o, &x);
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

// qkv_attention (the GPT's training path) against the unfused chain it replaces: split
// the packed projection, heads, rope, attention / rewired_attention, merge. Same values
// and the same gradient of the packed input, float64 and float32, all three kinds.
TEST_CASE("qkv_attention equals split + rope + attention + merge, values and gradient") {
  const int64_t B = 2, T = 7, H = 3, D = 4, C = H * D;
  for (DType dt : {DType::Float64, DType::Float32}) {
    for (int kind = 0; kind < 3; ++kind) {
      RunwayOptions o;
      o.summary = kind == 2 ? RunwaySummary::TwoHop : RunwaySummary::Absorption;
      o.runway_head = 1;
      const bool rewired = kind > 0;
      const Tensor x = randn({B, T, 3 * C}, 300 + kind, dt);
      const Tensor dy = randn({B, T, C}, 310 + kind, dt);
      auto unfused = [&](const Tensor& qkv) {
        auto parts = split(qkv, {C, C, C}, -1);
        auto heads = [&](const Tensor& t) { return permute(reshape(t, {B, T, H, D}), {0, 2, 1, 3}); };
        Tensor q = rope(heads(parts[0]), 500.0), k = rope(heads(parts[1]), 500.0), v = heads(parts[2]);
        Tensor y = rewired ? rewired_attention(q, k, v, o) : attention(q, k, v);
        return reshape(permute(y, {0, 2, 1, 3}), {B, T, C});
      };
      auto fused = [&](const Tensor& qkv) { return qkv_attention(qkv, H, 500.0, rewired, o); };
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

TEST_CASE("qkv_attention rejects a projection that does not split into heads, naming the shapes") {
  CHECK_THROWS_WITH(qkv_attention(randn({2, 5, 10}, 1), 2, 0.0, false, RunwayOptions{}),
                    Contains("qkv must be (B, T, 3C)") && Contains("(2, 5, 10)"));
  CHECK_THROWS_WITH(qkv_attention(randn({2, 5, 18}, 1), 2, 10000.0, false, RunwayOptions{}),
                    Contains("even head width"));
}
