// The tape: accumulation, reuse of a value, no_grad, detach, validation of
// gradients, un-broadcasting.
#include <catch2/catch.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"

using namespace runway;
using Catch::Matchers::Contains;

namespace {
Tensor leaf(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::Float64).set_requires_grad();
}
}  // namespace

TEST_CASE("a value used twice accumulates both contributions") {
  Tensor x = leaf({3.0}, {});
  Tensor y = x * x + x * 2.0;  // dy/dx = 2x + 2 = 8
  y.backward();
  CHECK(x.grad().item() == 8.0);
}

TEST_CASE("gradients accumulate across backward calls until zeroed") {
  Tensor x = leaf({1.0, 2.0}, {2});
  sum(x * 3.0).backward();
  sum(x * 3.0).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{6.0, 6.0});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  sum(x).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1.0, 1.0});
}

TEST_CASE("nodes run in reverse tape order on a diamond graph") {
  // y = a*b + a*c with b = exp(a), c = tanh(b): every path must be complete before
  // its node runs, or the result would be missing terms.
  Tensor a = leaf({0.3}, {});
  Tensor b = exp(a);
  Tensor c = tanh(b);
  Tensor y = a * b + a * c;
  y.backward();
  const double av = 0.3, bv = std::exp(av), cv = std::tanh(bv);
  const double expected = bv + av * bv + cv + av * (1 - cv * cv) * bv;
  CHECK(a.grad().item() == Approx(expected).epsilon(1e-12));
}

TEST_CASE("no_grad records nothing, and detach cuts the history") {
  Tensor x = leaf({1.0}, {});
  {
    NoGradGuard guard;
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
  }
  CHECK(grad_mode_enabled());
  Tensor z = (x * 2.0).detach() * x;  // d/dx treats the first factor as constant 2
  z.backward();
  CHECK(x.grad().item() == 2.0);
}

TEST_CASE("backward needs a scalar or a matching upstream gradient") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = x * 2.0;
  CHECK_THROWS_WITH(y.backward(), Contains("single-element") && Contains("(3,)"));
  CHECK_THROWS_WITH(y.backward(Tensor::ones({2}, DType::Float64)), Contains("(2,)") && Contains("(3,)"));
  CHECK_THROWS_WITH(y.backward(Tensor::ones({3}, DType::Float32)), Contains("float32"));
  y.backward(Tensor::from_vector({1, 10, 100}, {3}, DType::Float64));
  CHECK(x.grad().to_vector() == std::vector<double>{2, 20, 200});
  Tensor c = Tensor::ones({2}, DType::Float64);
  CHECK_THROWS_WITH(sum(c).backward(), Contains("does not require grad"));
}

TEST_CASE("broadcast gradients are summed back to each input's shape") {
  Tensor a = leaf({1, 2, 3}, {3, 1});
  Tensor b = leaf({10, 20}, {2});
  Tensor y = a * b;  // (3, 2)
  y.backward(Tensor::ones({3, 2}, DType::Float64));
  CHECK(a.grad().shape() == Shape{3, 1});
  CHECK(a.grad().to_vector() == std::vector<double>{30, 30, 30});
  CHECK(b.grad().shape() == Shape{2});
  CHECK(b.grad().to_vector() == std::vector<double>{6, 6});
}

namespace {
const OpName kWrongShape = declare_op("test_wrong_shape_grad");
const OpName kWrongDtype = declare_op("test_wrong_dtype_grad");
}  // namespace

TEST_CASE("a backward that returns the wrong shape or dtype is reported by op name") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = record(kWrongShape, x.detach() * 1.0, {x}, [](const Tensor&) {
    return Grads{Tensor::ones({4}, DType::Float64)};
  });
  CHECK_THROWS_WITH(y.backward(Tensor::ones({3}, DType::Float64)),
                    Contains("test_wrong_shape_grad") && Contains("(4,)") && Contains("(3,)"));
  Tensor z = record(kWrongDtype, x.detach() * 1.0, {x}, [](const Tensor&) {
    return Grads{Tensor::ones({3}, DType::Float32)};
  });
  CHECK_THROWS_WITH(z.backward(Tensor::ones({3}, DType::Float64)),
                    Contains("test_wrong_dtype_grad") && Contains("float32"));
}

TEST_CASE("sum_to reduces leading and size-1 dims and refuses the rest") {
  Tensor g = Tensor::ones({2, 3, 4}, DType::Float64);
  CHECK(sum_to(g, {3, 1}, "t").to_vector() == std::vector<double>{8, 8, 8});
  CHECK(sum_to(g, {}, "t").item() == 24.0);
  CHECK_THROWS_WITH(sum_to(g, {2, 4}, "myop"), Contains("myop") && Contains("(2, 3, 4)") && Contains("(2, 4)"));
}

TEST_CASE("only float tensors can require grad") {
  Tensor i = Tensor::from_indices({1}, {1});
  CHECK_THROWS_WITH(i.set_requires_grad(), Contains("int64"));
}

TEST_CASE("the graph survives backward, so it can be replayed") {
  Tensor x = leaf({0.5, -1.0}, {2});
  Tensor y = sum(sigmoid(x) * x);
  y.backward();
  const auto first = x.grad().to_vector();
  x.zero_grad();
  y.backward();
  CHECK(x.grad().to_vector() == first);
}
