// Tensors: creation, views, broadcasting rules, dtype conversion, printing, RNG.
#include <catch2/catch.hpp>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/tensor.h"

using namespace runway;
using Catch::Matchers::Contains;

TEST_CASE("creation fills shape, dtype and values") {
  Tensor z = Tensor::zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::Float32);
  CHECK(z.numel() == 6);
  CHECK(z.to_vector() == std::vector<double>(6, 0.0));
  CHECK(Tensor::ones({4}, DType::Float64).to_vector() == std::vector<double>(4, 1.0));
  CHECK(Tensor::full({2}, 2.5).to_vector() == std::vector<double>{2.5, 2.5});
  CHECK(Tensor::arange(0, 5).to_vector() == std::vector<double>{0, 1, 2, 3, 4});
  CHECK(Tensor::arange(1, 2, 0.25, DType::Float64).to_vector() == std::vector<double>{1, 1.25, 1.5, 1.75});
  CHECK(Tensor::scalar(3.0).dim() == 0);
  CHECK(Tensor::scalar(3.0).item() == 3.0);
  CHECK(Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}).at({1, 0}) == 4.0);
}

TEST_CASE("bad creation arguments are rejected with the sizes in the message") {
  CHECK_THROWS_WITH(Tensor::from_vector({1, 2, 3}, {2, 2}), Contains("3 values") && Contains("(2, 2)"));
  CHECK_THROWS_WITH(Tensor::arange(0, 1, 0), Contains("arange"));
  CHECK_THROWS_WITH(Tensor::zeros({2, -1}), Contains("negative"));
}

TEST_CASE("seeded random tensors are reproducible and have the right moments") {
  Generator g1(42), g2(42), g3(43);
  Tensor a = Tensor::normal({1000}, 0, 1, g1, DType::Float64);
  Tensor b = Tensor::normal({1000}, 0, 1, g2, DType::Float64);
  Tensor c = Tensor::normal({1000}, 0, 1, g3, DType::Float64);
  CHECK(a.to_vector() == b.to_vector());
  CHECK(a.to_vector() != c.to_vector());
  Generator g4(7);
  Tensor big = Tensor::normal({20000}, 2.0, 3.0, g4, DType::Float64);
  const double m = mean(big).item();
  const double sd = std::sqrt(mean(pow_scalar(add_scalar(big, -m), 2.0)).item());
  CHECK(m == Approx(2.0).margin(0.1));
  CHECK(sd == Approx(3.0).margin(0.1));
  Generator g5(9);
  Tensor u = Tensor::uniform({20000}, -1, 3, g5, DType::Float64);
  CHECK(max(u).item() < 3.0);
  CHECK(-max(neg(u)).item() >= -1.0);
  CHECK(mean(u).item() == Approx(1.0).margin(0.05));
}

TEST_CASE("generator state can be saved and restored exactly") {
  Generator g(5);
  g.normal();  // leaves a spare value pending
  const auto state = g.state();
  const double a = g.normal(), b = g.uniform01();
  g.set_state(state);
  CHECK(g.normal() == a);
  CHECK(g.uniform01() == b);
}

TEST_CASE("reshape of a contiguous tensor is a view, and of a transposed one a copy") {
  Tensor x = Tensor::arange(0, 12).reshape({3, 4});
  Tensor v = x.reshape({2, -1});
  CHECK(v.shape() == Shape{2, 6});
  CHECK(v.same_storage(x));
  Tensor t = x.transpose(0, 1);
  CHECK_FALSE(t.is_contiguous());
  CHECK(t.same_storage(x));
  CHECK(t.at({1, 2}) == 9.0);  // x[2][1]
  Tensor r = t.reshape({12});
  CHECK_FALSE(r.same_storage(x));
  CHECK(r.to_vector() == std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK_THROWS_WITH(x.reshape({5, -1}), Contains("(3, 4)") && Contains("(5, -1)"));
  CHECK_THROWS_WITH(x.reshape({-1, -1}), Contains("more than one -1"));
}

TEST_CASE("permute, slice and expand produce the right elements") {
  Tensor x = Tensor::arange(0, 24).reshape({2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.at({3, 1, 2}) == x.at({1, 2, 3}));
  Tensor s = x.slice(2, 1, 3);
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.at({1, 2, 0}) == x.at({1, 2, 1}));
  CHECK(s.contiguous().to_vector()[0] == 1.0);
  CHECK_THROWS_WITH(x.slice(2, 3, 5), Contains("[3, 5)") && Contains("size 4"));
  Tensor e = Tensor::from_vector({1, 2, 3}, {3, 1}).expand({2, 3, 4});
  CHECK(e.at({1, 2, 3}) == 3.0);
  CHECK(e.strides()[0] == 0);
  CHECK_THROWS_WITH(Tensor::zeros({3, 2}).expand({3, 4}), Contains("(3, 2)") && Contains("(3, 4)"));
  CHECK_THROWS_WITH(x.permute({0, 0, 1}), Contains("repeated"));
}

TEST_CASE("concat and split round-trip") {
  Tensor a = Tensor::arange(0, 6).reshape({2, 3});
  Tensor b = Tensor::arange(6, 10).reshape({2, 2});
  Tensor c = concat({a, b}, 1);
  CHECK(c.shape() == Shape{2, 5});
  CHECK(c.to_vector() == std::vector<double>{0, 1, 2, 6, 7, 3, 4, 5, 8, 9});
  auto parts = split(c, {3, 2}, 1);
  CHECK(parts[0].contiguous().to_vector() == a.to_vector());
  CHECK(parts[1].contiguous().to_vector() == b.to_vector());
  CHECK_THROWS_WITH(concat({a, Tensor::zeros({3, 3})}, 1), Contains("(3, 3)") && Contains("(2, 3)"));
  CHECK_THROWS_WITH(split(c, {1, 1}, 1), Contains("sum to 2"));
}

TEST_CASE("broadcasting follows NumPy rules and names the op and both shapes") {
  CHECK(broadcast_shapes({3, 1}, {1, 4}, "t") == Shape{3, 4});
  CHECK(broadcast_shapes({2, 3, 4}, {4}, "t") == Shape{2, 3, 4});
  CHECK(broadcast_shapes({}, {5}, "t") == Shape{5});
  CHECK(broadcast_shapes({1}, {0}, "t") == Shape{0});
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 3});
  CHECK_THROWS_WITH(add(a, b), Contains("add") && Contains("(2, 3)") && Contains("(4, 3)"));
  Tensor col = Tensor::from_vector({1, 2}, {2, 1});
  Tensor row = Tensor::from_vector({10, 20, 30}, {3});
  CHECK((col + row).to_vector() == std::vector<double>{11, 21, 31, 12, 22, 32});
}

TEST_CASE("dtype and device mismatches are errors naming the op") {
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({2}, DType::Float64);
  CHECK_THROWS_WITH(mul(a, b), Contains("mul") && Contains("float32") && Contains("float64"));
  Tensor i = Tensor::from_indices({1, 2}, {2});
  CHECK_THROWS_WITH(exp(i), Contains("exp") && Contains("int64"));
  CHECK_THROWS_WITH(a.data<double>(), Contains("float32"));
}

TEST_CASE("dtype conversion rounds through float32 and back") {
  Tensor d = Tensor::from_vector({0.1, 1e-3, 12345.678}, {3}, DType::Float64);
  Tensor f = d.to(DType::Float32);
  CHECK(f.dtype() == DType::Float32);
  const auto back = f.to(DType::Float64).to_vector();
  CHECK(back[0] == static_cast<double>(0.1f));
  CHECK(back[2] == static_cast<double>(12345.678f));
  CHECK(Tensor::from_indices({3, -1}, {2}).to(DType::Float64).to_vector() == std::vector<double>{3, -1});
}

TEST_CASE("the CUDA device is refused with a clear message when this process has none") {
  if (backend_available(Device::CUDA)) return;  // covered by the CUDA tests instead
  CHECK_THROWS_WITH(Tensor::zeros({2}, DType::Float32, Device::CUDA), Contains("no cuda backend"));
}

TEST_CASE("printing shows values, shape and dtype") {
  Tensor x = Tensor::from_vector({1, 2.5, 3, 4}, {2, 2});
  const std::string s = x.to_string();
  CHECK_THAT(s, Contains("[[1, 2.5],") && Contains("[3, 4]]") && Contains("shape=(2, 2)") && Contains("float32"));
  const std::string big = Tensor::arange(0, 100).to_string(6);
  CHECK_THAT(big, Contains("...") && Contains("99"));
  CHECK_THAT(Tensor::from_indices({7}, {1}).to_string(), Contains("[7]") && Contains("int64"));
}

TEST_CASE("zero-size tensors are contiguous and reduce to the identity") {
  Tensor e = Tensor::empty({2, 0, 5});
  CHECK(e.is_contiguous());
  CHECK(e.numel() == 0);
  CHECK(sum(e, {1}).to_vector() == std::vector<double>(10, 0.0));
}
