#include "viz/colormap.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace runway::viz {

namespace {

template <size_t N>
Rgb interpolate(const std::array<Rgb, N>& anchors, double t) {
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * static_cast<double>(N - 1);
  const size_t i = std::min(static_cast<size_t>(t), N - 2);
  const double f = t - static_cast<double>(i);
  auto mix = [f](uint8_t a, uint8_t b) {
    return static_cast<uint8_t>(std::lround(static_cast<double>(a) + f * (static_cast<double>(b) - a)));
  };
  return {mix(anchors[i].r, anchors[i + 1].r), mix(anchors[i].g, anchors[i + 1].g), mix(anchors[i].b, anchors[i + 1].b)};
}

// viridis sampled at 0, 1/8, ..., 1 (matplotlib's values, rounded).
constexpr std::array<Rgb, 9> kViridis{{{68, 1, 84},
                                       {71, 44, 122},
                                       {59, 81, 139},
                                       {44, 113, 142},
                                       {33, 144, 141},
                                       {39, 173, 129},
                                       {92, 200, 99},
                                       {170, 220, 50},
                                       {253, 231, 37}}};
// ColorBrewer RdBu (reversed: blue for negative), 7 classes.
constexpr std::array<Rgb, 7> kBlueWhiteRed{{{33, 102, 172},
                                            {103, 169, 207},
                                            {209, 229, 240},
                                            {247, 247, 247},
                                            {253, 219, 199},
                                            {239, 138, 98},
                                            {178, 24, 43}}};

}  // namespace

Rgb sequential_color(double t) { return interpolate(kViridis, t); }

Rgb diverging_color(double t) {
  if (!std::isfinite(t)) t = 0;
  return interpolate(kBlueWhiteRed, (std::clamp(t, -1.0, 1.0) + 1.0) / 2.0);
}

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

Rgb series_color(int i) {
  // Tableau 10: distinguishable, and readable on white.
  static constexpr std::array<Rgb, 10> palette{{{31, 119, 180},
                                                {255, 127, 14},
                                                {44, 160, 44},
                                                {214, 39, 40},
                                                {148, 103, 189},
                                                {140, 86, 75},
                                                {227, 119, 194},
                                                {127, 127, 127},
                                                {188, 189, 34},
                                                {23, 190, 207}}};
  return palette[static_cast<size_t>(((i % 10) + 10) % 10)];
}

}  // namespace runway::viz
