// Forward values of the ops against independent naive computations, plus the
// semantics the gradcheck cannot see (ties, masking, ignore index, dropout).
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/ops.h"
#include "engine/random.h"

using namespace runway;
using Catch::Matchers::Contains;

namespace {
Tensor randn(const Shape& s, uint64_t seed, DType dt = DType::Float64) {
  Generator g(seed);
  return Tensor::normal(s, 0, 1, g, dt);
}
}  // namespace

TEST_CASE("unary ops match libm") {
  const std::vector<double> v{-2.0, -0.5, 0.3, 1.7};
  Tensor x = Tensor::from_vector(v, {4}, DType::Float64);
  const auto e = exp(x).to_vector(), t = tanh(x).to_vector(), s = sigmoid(x).to_vector();
  const auto r = relu(x).to_vector(), g = gelu(x).to_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    CHECK(e[i] == Approx(std::exp(v[i])).epsilon(1e-15));
    CHECK(t[i] == Approx(std::tanh(v[i])).epsilon(1e-15));
    CHECK(s[i] == Approx(1 / (1 + std::exp(-v[i]))).epsilon(1e-15));
    CHECK(r[i] == (v[i] > 0 ? v[i] : 0.0));
    const double u = std::sqrt(2 / M_PI) * (v[i] + 0.044715 * v[i] * v[i] * v[i]);
    CHECK(g[i] == Approx(0.5 * v[i] * (1 + std::tanh(u))).epsilon(1e-14));
  }
  // GPT-2's gelu at 1.0 (tanh approximation) is 0.841192...
  CHECK(gelu(Tensor::scalar(1.0, DType::Float64)).item() == Approx(0.8411919906).epsilon(1e-9));
}

TEST_CASE("matmul matches a naive triple loop, batched and broadcast") {
  Tensor a = randn({2, 1, 3, 4}, 1), b = randn({3, 4, 5}, 2);
  Tensor c = matmul(a, b);
  REQUIRE(c.shape() == Shape{2, 3, 3, 5});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t m = 0; m < 3; ++m)
        for (int64_t n = 0; n < 5; ++n) {
          double acc = 0;
          for (int64_t k = 0; k < 4; ++k) acc += a.at({i, 0, m, k}) * b.at({j, k, n});
          CHECK(c.at({i, j, m, n}) == Approx(acc).epsilon(1e-12));
        }
  // Transposed and sliced views go through the same path.
  Tensor bt = randn({5, 4}, 3);
  Tensor d = matmul(a, transpose(bt, 0, 1));
  Tensor d_ref = matmul(a, transpose(bt, 0, 1).contiguous());
  CHECK(d.to_vector() == d_ref.to_vector());
  CHECK_THROWS_WITH(matmul(randn({2, 3}, 4), randn({4, 2}, 5)), Contains("(2, 3)") && Contains("(4, 2)"));
  CHECK_THROWS_WITH(matmul(randn({3}, 4), randn({3, 2}, 5)), Contains("matmul"));
}

TEST_CASE("float32 matmul agrees with float64 to float32 rounding") {
  Tensor a = randn({64, 48}, 6), b = randn({48, 32}, 7);
  const auto ref = matmul(a, b).to_vector();
  const auto f = matmul(a.to(DType::Float32), b.to(DType::Float32)).to_vector();
  for (size_t i = 0; i < ref.size(); ++i) CHECK(f[i] == Approx(ref[i]).margin(1e-4));
}

TEST_CASE("sum, mean and max over dims with keepdim") {
  Tensor x = Tensor::arange(0, 24, 1, DType::Float64).reshape({2, 3, 4});
  CHECK(sum(x).item() == 276.0);
  CHECK(sum(x, {1}).shape() == Shape{2, 4});
  CHECK(sum(x, {1}).to_vector() == std::vector<double>{12, 15, 18, 21, 48, 51, 54, 57});
  CHECK(sum(x, {0, 2}, true).shape() == Shape{1, 3, 1});
  CHECK(sum(x, {0, 2}, true).to_vector() == std::vector<double>{60, 92, 124});
  CHECK(mean(x, {-1}).to_vector() == std::vector<double>{1.5, 5.5, 9.5, 13.5, 17.5, 21.5});
  CHECK(max(x, {0}).to_vector() == sum(slice(x, 0, 1, 2), {0}).to_vector());
  CHECK_THROWS_WITH(sum(x, {1, 1}), Contains("twice"));
  CHECK_THROWS_WITH(sum(x, {3}), Contains("dim 3") && Contains("rank 3"));
}

TEST_CASE("max shares its gradient equally among ties") {
  Tensor x = Tensor::from_vector({1, 5, 5, 2}, {4}, DType::Float64).set_requires_grad();
  max(x).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0.5, 0.5, 0});
}

TEST_CASE("softmax and log_softmax are normalised and stable for large logits") {
  Tensor x = Tensor::from_vector({1000, 1001, 1002, -5, 0, 5}, {2, 3}, DType::Float64);
  const auto p = softmax(x, -1).to_vector();
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  CHECK(p[0] == Approx(1 / z).epsilon(1e-14));
  CHECK(p[2] == Approx(std::exp(2.0) / z).epsilon(1e-14));
  const auto lp = log_softmax(x, -1).to_vector();
  for (size_t i = 0; i < p.size(); ++i) CHECK(lp[i] == Approx(std::log(p[i])).epsilon(1e-12));
  // Over dim 0: each column sums to one.
  const auto s0 = sum(softmax(x, 0), {0}).to_vector();
  for (double v : s0) CHECK(v == Approx(1.0).epsilon(1e-15));
}

TEST_CASE("causal masking hides the future, and softmax gives it exactly zero weight") {
  Tensor x = randn({2, 4, 4}, 8);
  Tensor p = softmax(causal_mask(x), -1);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 4; ++i) {
      double row = 0;
      for (int64_t j = 0; j < 4; ++j) {
        if (j > i) CHECK(p.at({b, i, j}) == 0.0);
        row += p.at({b, i, j});
      }
      CHECK(row == Approx(1.0).epsilon(1e-14));
    }
  // Rectangular (cached decoding): 2 new queries over 5 keys see keys <= 3 and <= 4.
  Tensor r = causal_mask(Tensor::zeros({2, 5}, DType::Float64), -1.0);
  CHECK(r.to_vector() == std::vector<double>{0, 0, 0, 0, -1, 0, 0, 0, 0, 0});
  CHECK_THROWS_WITH(causal_mask(Tensor::zeros({5, 2})), Contains("T_k (2) < T_q (5)"));
}

TEST_CASE("layernorm matches the textbook formula") {
  Tensor x = randn({3, 6}, 9), w = randn({6}, 10), b = randn({6}, 11);
  Tensor y = layernorm(x, w, b, 1e-5);
  for (int64_t r = 0; r < 3; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < 6; ++c) m += x.at({r, c}) / 6;
    for (int64_t c = 0; c < 6; ++c) v += (x.at({r, c}) - m) * (x.at({r, c}) - m) / 6;
    for (int64_t c = 0; c < 6; ++c)
      CHECK(y.at({r, c}) == Approx((x.at({r, c}) - m) / std::sqrt(v + 1e-5) * w.at({c}) + b.at({c})).epsilon(1e-12));
  }
  CHECK_THROWS_WITH(layernorm(x, randn({5}, 1), b), Contains("(3, 6)") && Contains("(5,)"));
}

TEST_CASE("cumsum in all four variants") {
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {1, 4}, DType::Float64);
  CHECK(cumsum(x, 1).to_vector() == std::vector<double>{1, 3, 6, 10});
  CHECK(cumsum(x, 1, true).to_vector() == std::vector<double>{0, 1, 3, 6});
  CHECK(cumsum(x, 1, false, true).to_vector() == std::vector<double>{10, 9, 7, 4});
  CHECK(cumsum(x, 1, true, true).to_vector() == std::vector<double>{9, 7, 4, 0});
  CHECK(cumsum(transpose(x, 0, 1), 0).contiguous().to_vector() == std::vector<double>{1, 3, 6, 10});
}

TEST_CASE("embedding looks up rows and rejects out-of-range ids") {
  Tensor w = Tensor::arange(0, 6, 1, DType::Float64).reshape({3, 2});
  Tensor e = embedding(w, Tensor::from_indices({2, 0, 2}, {3}));
  CHECK(e.shape() == Shape{3, 2});
  CHECK(e.to_vector() == std::vector<double>{4, 5, 0, 1, 4, 5});
  CHECK_THROWS_WITH(embedding(w, Tensor::from_indices({3}, {1})), Contains("ids contains 3") && Contains("[0, 3)"));
  CHECK_THROWS_WITH(embedding(w, Tensor::from_vector({1}, {1})), Contains("int64"));
}

TEST_CASE("cross_entropy equals the mean negative log-likelihood over kept targets") {
  Tensor logits = randn({3, 4}, 12);
  Tensor targets = Tensor::from_indices({2, -100, 1}, {3});
  const double loss = cross_entropy(logits, targets).item();
  auto nll = [&](int64_t r, int64_t t) {
    double z = 0;
    for (int64_t c = 0; c < 4; ++c) z += std::exp(logits.at({r, c}));
    return std::log(z) - logits.at({r, t});
  };
  CHECK(loss == Approx((nll(0, 2) + nll(2, 1)) / 2).epsilon(1e-13));
  // Everything ignored: loss 0 and zero gradient rather than NaN.
  Tensor l2 = logits.detach().set_requires_grad();
  Tensor all_ignored = cross_entropy(l2, Tensor::from_indices({-100, -100, -100}, {3}));
  CHECK(all_ignored.item() == 0.0);
  all_ignored.backward();
  CHECK(sum(mul(l2.grad(), l2.grad())).item() == 0.0);
  CHECK_THROWS_WITH(cross_entropy(logits, Tensor::from_indices({0, 4, 1}, {3})), Contains("targets contains 4"));
  CHECK_THROWS_WITH(cross_entropy(logits, Tensor::from_indices({0, 1}, {2})), Contains("(3, 4)") && Contains("(2,)"));
}

TEST_CASE("dropout is seeded, keeps about 1-p of the values and rescales them") {
  Tensor x = Tensor::ones({10000}, DType::Float64);
  Generator g1(3), g2(3);
  const auto a = dropout(x, 0.25, g1).to_vector();
  CHECK(a == dropout(x, 0.25, g2).to_vector());
  int kept = 0;
  for (double v : a) {
    CHECK((v == 0.0 || v == Approx(1 / 0.75)));
    kept += v != 0.0;
  }
  CHECK(kept / 10000.0 == Approx(0.75).margin(0.02));
  Generator g3(3);
  CHECK(dropout(x, 0.25, g3, false).same_storage(x));
  CHECK_THROWS_WITH(dropout(x, 1.0, g3), Contains("[0, 1)"));
}

TEST_CASE("pow, div and scalar ops compute the obvious values") {
  Tensor a = Tensor::from_vector({2, 3}, {2}, DType::Float64), b = Tensor::from_vector({3, 0.5}, {2}, DType::Float64);
  CHECK(pow(a, b).to_vector()[0] == 8.0);
  CHECK(pow(a, b).to_vector()[1] == Approx(std::sqrt(3.0)).epsilon(1e-15));
  CHECK(div(a, b).to_vector() == std::vector<double>{2.0 / 3.0, 6.0});
  CHECK(pow_scalar(a, 2).to_vector() == std::vector<double>{4, 9});
  CHECK((a - 1.0).to_vector() == std::vector<double>{1, 2});
  CHECK((a / 2.0).to_vector() == std::vector<double>{1, 1.5});
  CHECK(sqrt(a).to_vector()[0] == Approx(std::sqrt(2.0)).epsilon(1e-15));
}

TEST_CASE("linear equals add(matmul(x, W), b): values and every gradient, with and without bias") {
  for (DType dt : {DType::Float64, DType::Float32}) {
    const double tol = dt == DType::Float64 ? 1e-12 : 1e-5;
    for (bool with_bias : {true, false}) {
      Tensor x = randn({3, 5, 4}, 41, dt).set_requires_grad(true), w = randn({4, 6}, 42, dt).set_requires_grad(true);
      Tensor b = randn({6}, 43, dt).set_requires_grad(true);
      Tensor x2 = x.detach().clone().set_requires_grad(true), w2 = w.detach().clone().set_requires_grad(true);
      Tensor b2 = b.detach().clone().set_requires_grad(true);
      const Tensor dy = randn({3, 5, 6}, 44, dt);
      Tensor y = linear(x, w, with_bias ? b : Tensor());
      Tensor y2 = with_bias ? add(matmul(x2, w2), b2) : matmul(x2, w2);
      y.backward(dy);
      y2.backward(dy);
      auto same = [&](const Tensor& p, const Tensor& q) {
        const auto u = p.to_vector(), v = q.to_vector();
        REQUIRE(u.size() == v.size());
        for (size_t i = 0; i < u.size(); ++i) CHECK(u[i] == Approx(v[i]).margin(tol));
      };
      same(y, y2);
      same(x.grad(), x2.grad());
      same(w.grad(), w2.grad());
      if (with_bias) same(b.grad(), b2.grad());
      else CHECK_FALSE(b.grad().defined());
    }
  }
}

TEST_CASE("linear names the mismatched shapes") {
  CHECK_THROWS_WITH(linear(randn({2, 3}, 1), randn({4, 5}, 2), randn({5}, 3)),
                    Contains("linear") && Contains("(2, 3)") && Contains("(4, 5)"));
  CHECK_THROWS_WITH(linear(randn({2, 4}, 1), randn({4, 5}, 2), randn({4}, 3)), Contains("bias (N,)"));
}

TEST_CASE("float32 gelu (vectorised tanh) matches the float64 formula to float rounding") {
  // 40000 values: above the size where the kernels split over threads. The upstream
  // gradient w is random so the fused backward (w * gelu'(x)) is checked as a product.
  const Tensor x64 = mul_scalar(randn({40000}, 45), 3.0);
  const Tensor w64 = randn({40000}, 46);
  const auto ref = gelu(x64).to_vector();
  const auto got = gelu(x64.to(DType::Float32)).to_vector();
  Tensor xg = x64.to(DType::Float32).set_requires_grad(true);
  sum(mul(gelu(xg), w64.to(DType::Float32))).backward();
  Tensor xr = x64.detach().set_requires_grad(true);
  sum(mul(gelu(xr), w64)).backward();
  const auto dg = xg.grad().to_vector(), dr = xr.grad().to_vector(), w = w64.to_vector();
  int64_t bad_value = 0, bad_grad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::abs(got[i] - ref[i]) > 2e-6 * (1 + std::abs(ref[i]))) ++bad_value;
    if (std::abs(dg[i] - dr[i]) > 2e-6 * (1 + std::abs(w[i]))) ++bad_grad;
  }
  CHECK(bad_value == 0);
  CHECK(bad_grad == 0);
}
