// Positional encodings against values worked out by hand: RoPE's rotation angles
// (frequency schedule theta_c = base^(-2c/D), rotate-half pairing) and ALiBi's slopes
// and biases. The other tests check these only through invariants (norms preserved,
// the backward is the inverse rotation), which a wrong frequency schedule also meets.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "engine/ops/attention.h"
#include "engine/backend.h"

using namespace runway;

namespace {

// x (1, 1, T, D) float64 with row t = values[t].
Tensor rows_of(const std::vector<std::vector<double>>& values) {
  std::vector<double> flat;
  for (const auto& r : values) flat.insert(flat.end(), r.begin(), r.end());
  return Tensor::from_vector(flat, {1, 1, static_cast<int64_t>(values.size()), static_cast<int64_t>(values[0].size())},
                             DType::Float64);
}

std::vector<double> unit(int64_t dim, int64_t c) {
  std::vector<double> e(dim, 0.0);
  e[c] = 1.0;
  return e;
}

}  // namespace

// RUNWAY.md only says RoPE is applied to Q and K before the logits; the code and
// docs/attention.md choose the rotate-half pairing (x[c], x[c + D/2]) with angle
// (t + offset) * base^(-2c/D). With base 10000 and D = 8 the frequencies are exact
// powers of ten: theta_c = 10000^(-2c/8) = 10^(-c) = 1, 0.1, 0.01, 0.001.
TEST_CASE("rope D=8 base 10000: unit vectors rotate by pos times 10^-c into their rotate-half partner") {
  // Position 5 (t = 2 with offset 3): angles 5, 0.5, 0.05, 0.005.
  //   cos 5 = 0.28366218546322625      sin 5 = -0.9589242746631385
  //   cos 0.5 = 0.8775825618903728     sin 0.5 = 0.479425538604203
  //   cos 0.05 = 0.9987502603949663    sin 0.05 = 0.04997916927067833
  //   cos 0.005 = 0.9999875000260416   sin 0.005 = 0.004999979166692708
  const double cos_at[4] = {0.28366218546322625, 0.8775825618903728, 0.9987502603949663, 0.9999875000260416};
  const double sin_at[4] = {-0.9589242746631385, 0.479425538604203, 0.04997916927067833, 0.004999979166692708};
  for (int64_t c = 0; c < 4; ++c) {
    INFO("pair " << c << " = (x[" << c << "], x[" << c + 4 << "])");
    // Three positions (t = 0, 1, 2), e_c at every one; only t = 2 is checked by value here.
    const Tensor x = rows_of({unit(8, c), unit(8, c), unit(8, c)});
    const std::vector<double> y = rope(x, 10000.0, 3).to_vector();
    const double* at5 = y.data() + 2 * 8;
    for (int64_t k = 0; k < 8; ++k) {
      INFO("component " << k);
      const double expected = k == c ? cos_at[c] : k == c + 4 ? sin_at[c] : 0.0;
      CHECK(at5[k] == Approx(expected).margin(1e-15));
    }
    // The first half of a rotated e_{c+4} is -sin, the second half cos (rotation, not reflection).
    const std::vector<double> y2 = rope(rows_of({unit(8, c + 4), unit(8, c + 4), unit(8, c + 4)}), 10000.0, 3).to_vector();
    CHECK(y2[2 * 8 + c] == Approx(-sin_at[c]).margin(1e-15));
    CHECK(y2[2 * 8 + c + 4] == Approx(cos_at[c]).margin(1e-15));
  }
}

TEST_CASE("rope D=4 base 100: a general vector at position 3, by hand") {
  // theta_0 = 100^0 = 1, theta_1 = 100^(-2/4) = 0.1; position 3 (t = 1, offset 2): angles 3 and 0.3.
  // x = (1, 2, 3, 4), pairs (x0, x2) = (1, 3) and (x1, x3) = (2, 4):
  //   y0 = 1 cos 3 - 3 sin 3     = -0.98999249660 - 0.42336002418 = -1.413352520780047
  //   y2 = 1 sin 3 + 3 cos 3     =  0.14112000806 - 2.96997748980 = -2.828857481741469
  //   y1 = 2 cos 0.3 - 4 sin 0.3 =  1.91067297825 - 1.18208082665 =  0.7285921516058538
  //   y3 = 2 sin 0.3 + 4 cos 0.3 =  0.59104041332 + 3.82134595650 =  4.412386369825103
  const Tensor x = rows_of({{0.5, -0.5, 0.25, 2.0}, {1.0, 2.0, 3.0, 4.0}});
  const std::vector<double> y = rope(x, 100.0, 2).to_vector();
  CHECK(y[4 + 0] == Approx(-1.413352520780047).margin(1e-14));
  CHECK(y[4 + 1] == Approx(0.7285921516058538).margin(1e-14));
  CHECK(y[4 + 2] == Approx(-2.828857481741469).margin(1e-14));
  CHECK(y[4 + 3] == Approx(4.412386369825103).margin(1e-14));
  // Row t = 0 is at position 2: angles 2 and 0.2 (cos 2 = -0.4161468365471424,
  // sin 2 = 0.9092974268256817): y0 = 0.5 cos 2 - 0.25 sin 2 = -0.43539777497...
  CHECK(y[0] == Approx(0.5 * -0.4161468365471424 - 0.25 * 0.9092974268256817).margin(1e-14));
}

TEST_CASE("rope over many rows, positions and widths follows theta_c = base^(-2c/D) with rotate-half pairs") {
  // A plain loop reference (written here, independent of the kernel's table), at a size
  // that takes the kernel's threaded path (rows * seq * dim = 3 * 37 * 160 > 2^14).
  for (int64_t dim : {2, 6, 160}) {
    for (double base : {10000.0, 7.5}) {
      INFO("dim " << dim << ", base " << base);
      const int64_t rows = 3, seq = 37, offset = 11, half = dim / 2;
      std::vector<double> xv(rows * seq * dim);
      for (size_t i = 0; i < xv.size(); ++i) xv[i] = std::sin(0.37 * static_cast<double>(i) + 1.0);
      const Tensor x = Tensor::from_vector(xv, {rows, seq, dim}, DType::Float64);
      const std::vector<double> y = rope(x, base, offset).to_vector();
      double worst = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t t = 0; t < seq; ++t)
          for (int64_t c = 0; c < half; ++c) {
            const double angle = static_cast<double>(t + offset) * std::pow(base, -2.0 * static_cast<double>(c) / static_cast<double>(dim));
            const double* xr = xv.data() + (r * seq + t) * dim;
            const double* yr = y.data() + (r * seq + t) * dim;
            const double y1 = xr[c] * std::cos(angle) - xr[c + half] * std::sin(angle);
            const double y2 = xr[c] * std::sin(angle) + xr[c + half] * std::cos(angle);
            worst = std::max({worst, std::abs(yr[c] - y1), std::abs(yr[c + half] - y2)});
          }
      CHECK(worst < 1e-12);
    }
  }
}

TEST_CASE("qkv_to_heads rotates q and k by the same hand-computed angles and leaves v alone") {
  // B = 1, T = 3, H = 1, D = 4, base 100: at t = 2 the angles are 2 * 1 and 2 * 0.1.
  // q = k = v = e_1 at every position: rotated q[t=2] = (0, cos 0.2, 0, sin 0.2)
  // with cos 0.2 = 0.9800665778412416, sin 0.2 = 0.19866933079506122.
  const int64_t T = 3, D = 4;
  std::vector<double> packed(T * 3 * D, 0.0), heads(3 * T * D, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t part = 0; part < 3; ++part) packed[(t * 3 + part) * D + 1] = 1.0;
  backend_for(Device::CPU).qkv_to_heads(DType::Float64, packed.data(), heads.data(), 1, T, 1, D, 100.0);
  for (int64_t part = 0; part < 2; ++part) {
    const double* at2 = heads.data() + (part * T + 2) * D;
    CHECK(at2[0] == Approx(0.0).margin(1e-15));
    CHECK(at2[1] == Approx(0.9800665778412416).margin(1e-15));
    CHECK(at2[2] == Approx(0.0).margin(1e-15));
    CHECK(at2[3] == Approx(0.19866933079506122).margin(1e-15));
  }
  const double* v2 = heads.data() + (2 * T + 2) * D;
  CHECK(v2[1] == 1.0);
  CHECK(v2[3] == 0.0);
}

// Press et al. (ALiBi) give slopes 2^(-8h/H), h = 1..H, for H a power of two. For other
// H their reference code takes the 2^floor(log2 H) power-of-two slopes and fills up with
// every other slope of the 2x case (H = 6: 2^-2, 2^-4, 2^-6, 2^-8, 2^-1, 2^-3). This
// engine documents a different choice (engine/ops/attention.h, docs/attention.md): the same
// geometric rule 2^(-8h/H) for every H. The test pins the documented rule.
TEST_CASE("alibi slopes for H = 4, 6 and 8, by hand") {
  CHECK(alibi_slopes(4) == std::vector<double>{0.25, 0.0625, 0.015625, 0.00390625});
  CHECK(alibi_slopes(8) == std::vector<double>{0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625});
  // H = 6: 2^(-4/3), 2^(-8/3), 2^-4, 2^(-16/3), 2^(-20/3), 2^-8.
  const std::vector<double> six{0.3968502629920499, 0.15749013123685915, 0.0625, 0.024803141437003122,
                                0.009843133202303695, 0.00390625};
  const std::vector<double> got = alibi_slopes(6);
  REQUIRE(got.size() == 6);
  for (size_t h = 0; h < 6; ++h) CHECK(got[h] == Approx(six[h]).epsilon(1e-15));
  CHECK(alibi_slopes(1) == std::vector<double>{0.00390625});
}

TEST_CASE("alibi biases the logits by minus slope times (i - j) per head") {
  // With q = 0 the logits are the bias alone, and with v = the identity (D = T) each
  // output row is that row's attention weights: A[i, j] = exp(-slope (i - j)) / sum.
  for (int64_t H : {4, 6, 8}) {
    INFO("H = " << H);
    const int64_t T = 5;
    const Tensor q = Tensor::zeros({1, H, T, T}, DType::Float64);
    const Tensor k = Tensor::from_vector(std::vector<double>(H * T * T, 0.7), {1, H, T, T}, DType::Float64);
    std::vector<double> eye(H * T * T, 0.0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) eye[(h * T + i) * T + i] = 1.0;
    const Tensor v = Tensor::from_vector(eye, {1, H, T, T}, DType::Float64);
    const std::vector<double> slopes = alibi_slopes(H);
    const std::vector<double> a =
        causal_attention(AttentionInputs::split(q, k, v), AttentionOptions::standard().with_alibi()).to_vector();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          const double w = a[(h * T + i) * T + j];
          INFO("head " << h << " row " << i << " column " << j);
          if (j > i) {
            CHECK(w == 0.0);
          } else {
            // log(A[i,j] / A[i,i]) is the bias difference: -slope_h * (i - j).
            CHECK(std::log(w / a[(h * T + i) * T + i]) == Approx(-slopes[h] * static_cast<double>(i - j)).margin(1e-12));
          }
        }
    if (H == 4) {
      // Head 0 (slope 1/4), row 2: exp(-0.5), exp(-0.25), 1 normalised, by hand:
      // sum = 0.60653065971 + 0.77880078307 + 1 = 2.38533144278.
      CHECK(a[2 * T + 0] == Approx(0.25427521259046565).epsilon(1e-14));
      CHECK(a[2 * T + 1] == Approx(0.3264958357998367).epsilon(1e-14));
      CHECK(a[2 * T + 2] == Approx(0.4192289516096977).epsilon(1e-14));
    }
  }
}
