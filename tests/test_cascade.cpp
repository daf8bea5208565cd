// Runway-cascade diagnostics (nn/cascade.h) on hand-made attention matrices whose
// direct and runway parts are worked out by hand in the comments.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/random.h"
#include "engine/tensor.h"
#include "nn/cascade.h"

using Catch::Matchers::Contains;
using runway::Error;
using runway::nn::runway_cascade;

namespace {

using Matrix = std::vector<double>;

// Layer 1 of the 3-token examples: token 1 reads token 0 only, tokens 0 and 2 read
// themselves. Its rollout is C_1 = 1/2 (I + A1) = [[1,0,0],[.5,.5,0],[0,0,1]].
const Matrix kA1 = {1, 0, 0,  //
                    1, 0, 0,  //
                    0, 0, 1};

Matrix second_layer(double on0, double on1, double on2) {
  return {1, 0, 0,  //
          0, 1, 0,  //
          on0, on1, on2};
}

}  // namespace

TEST_CASE("cascade: the first layer has no runway term, its direct term is half the attention") {
  const Matrix a = {1, 0, 0, 0,        //
                    0.3, 0.7, 0, 0,    //
                    0.2, 0.5, 0.3, 0,  //
                    0.1, 0.2, 0.3, 0.4};
  const auto report = runway_cascade({a}, 4);
  REQUIRE(report.layers.size() == 1);
  const auto& c = report.layers[0];
  CHECK(c.runway_share == 0);
  CHECK(c.runway_total == 0);
  // direct(d) = mean over pairs at distance d of A[i, i-d] / 2:
  //   d = 1: (0.3 + 0.5 + 0.3) / 3 / 2;  d = 2: (0.2 + 0.2) / 2 / 2;  d = 3: 0.1 / 2.
  CHECK(c.direct_by_distance[1] == Approx(1.1 / 6));
  CHECK(c.direct_by_distance[2] == Approx(0.1));
  CHECK(c.direct_by_distance[3] == Approx(0.05));
  CHECK(c.direct_total == Approx((0.2 + 0.2 + 0.1) / 2));
  for (double r : c.runway_by_distance) CHECK(r == 0);
}

TEST_CASE("cascade: token 2 reading token 1, which read token 0, is all runway") {
  // runway_2[2,0] = 1/2 A2[2,1] C_1[1,0] = 1/2 * 1 * 0.5 = 0.25; direct_2[2,0] = 0.
  const auto report = runway_cascade({kA1, second_layer(0, 1, 0)}, 3);
  REQUIRE(report.layers.size() == 2);
  const auto& c = report.layers[1];
  CHECK(c.runway_total == Approx(0.25));
  CHECK(c.direct_total == 0);
  CHECK(c.runway_share == Approx(1.0));
  CHECK(c.runway_by_distance[2] == Approx(0.25));
  // C_2[2,:] = 1/2 C_1[2,:] + 1/2 C_1[1,:] = [.25, .25, .5]
  CHECK(c.rollout[6] == Approx(0.25));
  CHECK(c.rollout[7] == Approx(0.25));
  CHECK(c.rollout[8] == Approx(0.5));
  // And C_1 itself, as stated above.
  const Matrix c1 = {1, 0, 0, 0.5, 0.5, 0, 0, 0, 1};
  for (size_t i = 0; i < 9; ++i) CHECK(report.layers[0].rollout[i] == Approx(c1[i]).margin(1e-15));
}

TEST_CASE("cascade: token 2 reading token 0 directly has no runway part") {
  const auto report = runway_cascade({kA1, second_layer(1, 0, 0)}, 3);
  const auto& c = report.layers[1];
  CHECK(c.direct_total == Approx(0.5));  // 1/2 * A2[2,0] * C_1[0,0] = 1/2
  CHECK(c.runway_total == 0);
  CHECK(c.runway_share == 0);
}

TEST_CASE("cascade: half direct, half through the runway gives a runway share of 1/3") {
  // direct = 1/2 * 0.5 * 1 = 0.25; runway = 1/2 * 0.5 * C_1[1,0] = 0.125; share = 0.125 / 0.375.
  const auto report = runway_cascade({kA1, second_layer(0.5, 0.5, 0)}, 3);
  const auto& c = report.layers[1];
  CHECK(c.direct_by_distance[2] == Approx(0.25));
  CHECK(c.runway_by_distance[2] == Approx(0.125));
  CHECK(c.runway_share == Approx(1.0 / 3.0));
}

TEST_CASE("cascade: attending only to oneself carries nothing across tokens") {
  const Matrix identity = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const auto report = runway_cascade({identity, identity}, 3);
  for (const auto& c : report.layers) {
    CHECK(c.runway_share == 0);  // 0 / 0 is reported as 0
    CHECK(c.direct_total == 0);
    for (size_t i = 0; i < 9; ++i) CHECK(c.rollout[i] == (i % 4 == 0 ? 1.0 : 0.0));
  }
}

TEST_CASE("cascade: rollout rows stay stochastic and causal through random layers") {
  runway::Generator gen(7);
  const int64_t T = 9;
  std::vector<Matrix> layers;
  for (int l = 0; l < 4; ++l) {
    Matrix a(T * T, 0.0);
    for (int64_t i = 0; i < T; ++i) {
      double sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += a[i * T + j] = gen.uniform01() + 0.01;
      for (int64_t j = 0; j <= i; ++j) a[i * T + j] /= sum;
    }
    layers.push_back(a);
  }
  const auto report = runway_cascade(layers, T);
  for (const auto& c : report.layers) {
    CHECK(c.runway_share >= 0);
    CHECK(c.runway_share <= 1);
    for (int64_t i = 0; i < T; ++i) {
      double row = 0;
      for (int64_t j = 0; j < T; ++j) {
        if (j > i) CHECK(c.rollout[i * T + j] == 0);
        row += c.rollout[i * T + j];
      }
      CHECK(row == Approx(1.0).epsilon(1e-12));
    }
  }
  // Later layers mix more: token 0 has reached every other token in the last rollout.
  for (int64_t i = 1; i < T; ++i) CHECK(report.layers.back().rollout[i * T] > 0);
}

TEST_CASE("cascade: malformed attention is an error naming the layer and entry") {
  CHECK_THROWS_WITH(runway_cascade({Matrix(8, 0.0)}, 3), Contains("layer 0 has 8 entries"));
  CHECK_THROWS_WITH(runway_cascade({kA1, {1, 0.5, 0, 0.5, 0.5, 0, 0, 0, 1}}, 3),
                    Contains("layer 1 entry (0, 1) is 0.5, attention must be causal"));
  CHECK_THROWS_WITH(runway_cascade({{1, 0, 0, 0.5, 0.4, 0, 0, 0, 1}}, 3), Contains("layer 0 row 1 sums to 0.9"));
  CHECK_THROWS_WITH(runway_cascade({{1, 0, 0, 1.5, -0.5, 0, 0, 0, 1}}, 3), Contains("entry (1, 1) is -0.5"));
  CHECK_THROWS_WITH(runway_cascade({{1, 0, 0, NAN, 0, 0, 0, 0, 1}}, 3), Contains("entry (1, 0) is nan"));
  CHECK_THROWS_WITH(runway_cascade({}, 0), Contains("T must be >= 1"));
}

TEST_CASE("cascade: mean_over_heads averages one batch row's heads") {
  // (B=2, H=2, T=2, T=2): batch row 1 has heads [[1,0],[.2,.8]] and [[1,0],[.6,.4]].
  const std::vector<double> values = {1, 0, 1, 0, 1, 0, 1, 0,  //
                                      1, 0, 0.2, 0.8, 1, 0, 0.6, 0.4};
  const runway::Tensor a = runway::Tensor::from_vector(values, {2, 2, 2, 2}, runway::DType::Float64);
  const std::vector<double> m = runway::nn::mean_over_heads(a, 1);
  REQUIRE(m.size() == 4);
  CHECK(m[0] == 1);
  CHECK(m[2] == Approx(0.4));
  CHECK(m[3] == Approx(0.6));
  CHECK_THROWS_WITH(runway::nn::mean_over_heads(a, 2), Contains("batch row 2 outside 0..1"));
  CHECK_THROWS_WITH(runway::nn::mean_over_heads(runway::Tensor::zeros({2, 3}), 0), Contains("(B, H, T, T)"));
  CHECK(runway::nn::mean_over_heads(values, 2, 2, 1) == m);  // the host-values form agrees
  CHECK_THROWS_WITH(runway::nn::mean_over_heads(values, 2, 2, 2), Contains("no batch row 2"));
}
