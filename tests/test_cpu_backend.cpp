// The CPU backend's grouped products and fused layout kernels against plain loops and
// against the backend interface's default (composed) implementations.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend.h"
#include "engine/fused_kernel.h"
#include "engine/op_table.h"
#include "engine/random.h"

using namespace runway;
using Catch::Matchers::Contains;

namespace {

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  Generator gen(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(gen.uniform(-1, 1));
  return v;
}

// One product of a group, with its own buffers and the answer worked out in double.
struct Product {
  GemmArgs g;
  std::vector<float> a, b, c, bias, expected;

  Product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch, double beta, bool with_bias,
          uint64_t seed) {
    g = contiguous_gemm_args(ta, tb, m, n, k, batch, /*alpha=*/1.5, beta);
    a = random_floats(batch * m * k, seed);
    b = random_floats(batch * k * n, seed + 1);
    c = random_floats(batch * m * n, seed + 2);
    if (beta == 0.0 && !with_bias) std::fill(c.begin(), c.end(), std::numeric_limits<float>::quiet_NaN());
    if (with_bias) bias = random_floats(n, seed + 3);
    expected.resize(c.size());
    for (int64_t i = 0; i < batch; ++i)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t col = 0; col < n; ++col) {
          double acc = 0;
          for (int64_t j = 0; j < k; ++j) {
            const double av = a[i * m * k + (ta ? j * m + r : r * k + j)];
            const double bv = b[i * k * n + (tb ? col * k + j : j * n + col)];
            acc += av * bv;
          }
          const int64_t at = i * m * n + r * n + col;
          const double start = with_bias ? bias[col] : (beta == 0.0 ? 0.0 : beta * c[at]);
          expected[at] = static_cast<float>(start + g.alpha * acc);
        }
    if (with_bias) g.row_init = bias.data();
  }
  GemmCall call() { return GemmCall{g, a.data(), b.data(), c.data()}; }
  // Largest error relative to the size of the terms.
  double error() const {
    double worst = 0;
    for (size_t i = 0; i < c.size(); ++i) worst = std::max(worst, std::abs(c[i] - expected[i]) / (1.0 + std::abs(expected[i])));
    return worst;
  }
};

std::vector<Product> mixed_products() {
  std::vector<Product> p;
  p.emplace_back(false, false, 200, 64, 100, 1, 0.0, true, 10);  // rows split, bias
  p.emplace_back(false, true, 3, 700, 300, 1, 0.0, true, 20);    // wide and short: columns split, bias
  p.emplace_back(true, false, 40, 50, 60, 5, 1.0, false, 30);    // batch items split, accumulate
  p.emplace_back(true, true, 2, 3, 4, 1, 0.5, false, 40);        // too small to split
  p.emplace_back(false, false, 7, 9, 0, 1, 0.0, true, 50);       // k = 0: C is the bias
  p.emplace_back(false, false, 6, 5, 0, 2, 0.0, false, 60);      // k = 0, beta 0: zeros over NaN
  return p;
}

// The fused kernels by name (engine/fused_kernel.h); op_table() links every op family's file,
// and so its kernel objects, into this program.
const FusedKernel<DType, const std::vector<GemmCall>&>& gemm_group_kernel() {
  (void)op_table();
  return fused_kernel<DType, const std::vector<GemmCall>&>("gemm_group");
}
const FusedKernel<DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double>& qkv_to_heads_kernel() {
  (void)op_table();
  return fused_kernel<DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double>("qkv_to_heads");
}
const FusedKernel<DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double>& heads_to_qkv_kernel() {
  (void)op_table();
  return fused_kernel<DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double>("heads_to_qkv");
}

}  // namespace

TEST_CASE("gemm_group: every product right, and the same values as one gemm call each") {
  Backend& cpu = backend_for(Device::CPU);
  std::vector<Product> grouped = mixed_products(), single = mixed_products();
  std::vector<GemmCall> calls;
  for (Product& p : grouped) calls.push_back(p.call());
  REQUIRE(gemm_group_kernel().implementation_for(Device::CPU) != nullptr);
  gemm_group_kernel()(cpu, DType::Float32, calls);  // the CPU implementation
  for (Product& p : single) cpu.gemm(DType::Float32, p.g, p.a.data(), p.b.data(), p.c.data());
  for (size_t i = 0; i < grouped.size(); ++i) {
    INFO("product " << i);
    CHECK(grouped[i].error() < 1e-5);
    CHECK(grouped[i].c == single[i].c);  // the same split, so the same float sums
  }
}

TEST_CASE("gemm row_init needs a contiguous C and says so") {
  Backend& cpu = backend_for(Device::CPU);
  Product p(false, false, 4, 3, 2, 1, 0.0, true, 70);
  p.g.ldc = 5;
  p.c.resize(4 * 5);
  CHECK_THROWS_WITH(cpu.gemm(DType::Float32, p.g, p.a.data(), p.b.data(), p.c.data()),
                    Contains("row_init") && Contains("ldc 5"));
}

TEST_CASE("qkv_to_heads / heads_to_qkv: the fused CPU pass equals the default gather + rope, and is its adjoint") {
  Backend& cpu = backend_for(Device::CPU);
  const int64_t B = 2, T = 5, H = 3, D = 4, n = 3 * B * T * H * D;
  for (double base : {0.0, 10000.0, 7.0}) {
    INFO("rope base " << base);
    Generator gen(3);
    std::vector<double> packed(n), dheads(n);
    for (double& x : packed) x = gen.uniform(-1, 1);
    for (double& x : dheads) x = gen.uniform(-1, 1);
    std::vector<double> fused(n), composed(n);
    REQUIRE(qkv_to_heads_kernel().implementation_for(Device::CPU) != nullptr);
    qkv_to_heads_kernel()(cpu, DType::Float64, packed.data(), fused.data(), B, T, H, D, base);
    qkv_to_heads_kernel().default_fn()(cpu, DType::Float64, packed.data(), composed.data(), B, T, H, D, base);
    for (int64_t i = 0; i < n; ++i) REQUIRE(fused[i] == Approx(composed[i]).margin(1e-15));
    // v (the third part) is copied untouched: heads[2, b, h, t, :] = packed[b, t, 2, h, :]
    CHECK(fused[((2 * B + 1) * H + 2) * T * D + 3 * D + 1] == packed[((1 * T + 3) * 3 + 2) * H * D + 2 * D + 1]);

    std::vector<double> back_fused(n), back_composed(n), scratch = dheads;
    heads_to_qkv_kernel()(cpu, DType::Float64, dheads.data(), back_fused.data(), B, T, H, D, base);
    heads_to_qkv_kernel().default_fn()(cpu, DType::Float64, scratch.data(), back_composed.data(), B, T, H, D, base);
    for (int64_t i = 0; i < n; ++i) REQUIRE(back_fused[i] == Approx(back_composed[i]).margin(1e-15));
    // <heads_to_qkv(d), x> = <d, qkv_to_heads(x)>: the backward is the forward's adjoint.
    double lhs = 0, rhs = 0;
    for (int64_t i = 0; i < n; ++i) {
      lhs += back_fused[i] * packed[i];
      rhs += dheads[i] * fused[i];
    }
    CHECK(lhs == Approx(rhs).epsilon(1e-12));
  }
}
