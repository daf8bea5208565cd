// The gradient checker itself: it must catch wrong backwards, in both modes, and
// its structural checks must catch what a numeric comparison cannot.
#include <catch2/catch.hpp>

#include "engine/autograd.h"
#include "engine/gradcheck.h"
#include "engine/ops.h"
#include "engine/random.h"

using namespace runway;

namespace {

Tensor randn(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return Tensor::normal(s, 0, 1, g, DType::Float64);
}

// sin-like op with a deliberately wrong backward: d/dx x^3 reported as 2 x^2.
const OpName kBrokenCube = declare_op("test_broken_cube");
Tensor broken_cube(const Tensor& x) {
  Tensor out;
  {
    NoGradGuard ng;
    out = mul(mul(x, x), x);
  }
  return record(kBrokenCube, out, {x}, [x = x.detach()](const Tensor& g) -> Grads {
    return {mul(g, mul_scalar(mul(x, x), 2.0))};
  });
}

// Correct values, but a backward that ignores the upstream gradient's scale.
const OpName kIgnoresUpstream = declare_op("test_ignores_upstream");
Tensor ignores_upstream(const Tensor& x) {
  Tensor out;
  {
    NoGradGuard ng;
    out = mul_scalar(x, 2.0);
  }
  return record(kIgnoresUpstream, out, {x}, [](const Tensor& g) -> Grads {
    return {add_scalar(mul_scalar(g, 2.0), 1e-3)};
  });
}

// A backward with hidden state: each call returns a different gradient.
const OpName kStateful = declare_op("test_stateful_backward");
Tensor stateful(const Tensor& x) {
  Tensor out;
  {
    NoGradGuard ng;
    out = mul_scalar(x, 1.0);
  }
  auto calls = std::make_shared<int>(0);
  return record(kStateful, out, {x}, [calls](const Tensor& g) -> Grads {
    ++*calls;
    return {mul_scalar(g, *calls == 1 ? 1.0 : 1.0 + 1e-12)};
  });
}

// tanh with a backward that is the exact gradient times `factor`: factor 1 is correct,
// 1 + 1e-4 is wrong by a relative 1e-4 everywhere, the kind of error (a slightly wrong
// constant, a float32 intermediate) the old default tolerance (1e-5 + 1e-3 |n|) let pass.
const OpName kScaledTanh = declare_op("test_tanh_scaled_backward");
Tensor tanh_scaled_backward(const Tensor& x, double factor) {
  Tensor out;
  {
    NoGradGuard ng;
    out = tanh(x);
  }
  return record(kScaledTanh, out, {x}, [y = out.detach(), factor](const Tensor& g) -> Grads {
    return {mul_scalar(mul(g, add_scalar(neg(mul(y, y)), 1.0)), factor)};
  });
}

}  // namespace

TEST_CASE("a backward wrong by a relative 1e-4 fails the default tolerance, in both modes") {
  for (bool fast : {false, true}) {
    INFO((fast ? "random projections" : "full Jacobian"));
    GradcheckOptions o;
    o.fast = fast;
    // Projections at a size the CPU backend runs threaded (181 x 183 > 2^15 elements).
    const Tensor x = fast ? randn({181, 183}, 8) : randn({4, 5}, 7);
    auto exact = [](const std::vector<Tensor>& in) { return tanh_scaled_backward(in[0], 1.0); };
    auto wrong = [](const std::vector<Tensor>& in) { return tanh_scaled_backward(in[0], 1.0 + 1e-4); };
    const GradcheckResult good = gradcheck(exact, {x}, o);
    CHECK(good.passed);
    const GradcheckResult bad = gradcheck(wrong, {x}, o);
    CHECK_FALSE(bad.passed);
    REQUIRE(bad.inputs.size() == 1);
    CHECK(bad.inputs[0].tolerance_used > 1.0);
    CHECK(bad.failures.empty());  // caught by the comparison itself, not a structural check
    // The exact backward stays far inside the tolerance: the default is not at the edge
    // of what finite differences can resolve.
    REQUIRE(good.inputs.size() == 1);
    CHECK(good.inputs[0].tolerance_used < 0.1);
    // The old default (atol 1e-5, rtol 1e-3) let this backward through.
    GradcheckOptions old_default = o;
    old_default.atol = 1e-5;
    old_default.rtol = 1e-3;
    CHECK(gradcheck(wrong, {x}, old_default).passed);
  }
}

TEST_CASE("a correct composite passes in both modes") {
  auto f = [](const std::vector<Tensor>& x) { return tanh(matmul(x[0], x[1])); };
  std::vector<Tensor> in{randn({3, 4}, 1), randn({4, 2}, 2)};
  CHECK(gradcheck(f, in).passed);
  GradcheckOptions fast;
  fast.fast = true;
  CHECK(gradcheck(f, in, fast).passed);
}

TEST_CASE("a wrong backward fails, with the error reported") {
  auto f = [](const std::vector<Tensor>& x) { return broken_cube(x[0]); };
  std::vector<Tensor> in{randn({5}, 3)};
  GradcheckResult r = gradcheck(f, in);
  CHECK_FALSE(r.passed);
  REQUIRE(r.inputs.size() == 1);
  CHECK_FALSE(r.inputs[0].passed);
  CHECK(r.inputs[0].max_abs_err > 1e-2);
  GradcheckOptions fast;
  fast.fast = true;
  CHECK_FALSE(gradcheck(f, in, fast).passed);
}

TEST_CASE("a gradient that is nonzero for a zero upstream is a structural failure") {
  auto f = [](const std::vector<Tensor>& x) { return ignores_upstream(x[0]); };
  GradcheckOptions loose;  // the offset is within tolerance numerically...
  loose.atol = 1e-2;
  GradcheckResult r = gradcheck(f, {randn({3}, 4)}, loose);
  CHECK(r.inputs[0].passed);
  CHECK_FALSE(r.passed);  // ...but the zero-upstream check catches it
  REQUIRE_FALSE(r.failures.empty());
  CHECK_THAT(r.failures[0], Catch::Matchers::Contains("zero upstream"));
}

TEST_CASE("a backward that differs between two runs is a structural failure") {
  auto f = [](const std::vector<Tensor>& x) { return stateful(x[0]); };
  GradcheckResult r = gradcheck(f, {randn({3}, 5)});
  CHECK_FALSE(r.passed);
  bool found = false;
  for (const auto& msg : r.failures) found = found || msg.find("second backward") != std::string::npos;
  CHECK(found);
}

TEST_CASE("int64 inputs pass through and float32 differentiable inputs are refused") {
  auto f = [](const std::vector<Tensor>& x) { return embedding(x[0], x[1]); };
  CHECK(gradcheck(f, {randn({4, 3}, 6), Tensor::from_indices({3, 1, 3}, {3})}).passed);
  CHECK_THROWS_WITH(gradcheck(f, {randn({4, 3}, 6).to(DType::Float32), Tensor::from_indices({1}, {1})},
                              {}, {true, false}),
                    Catch::Matchers::Contains("float64"));
}
