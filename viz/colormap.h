// Colour scales for heatmaps and charts.
#pragma once

#include <string>

#include "viz/canvas.h"

namespace runway::viz {

// Perceptually ordered sequential scale (viridis: dark purple at 0, yellow at 1);
// t is clamped to [0, 1].
Rgb sequential_color(double t);
// Diverging scale for signed values: blue at -1, white at 0, red at +1; t clamped to [-1, 1].
Rgb diverging_color(double t);
// "#rrggbb" for HTML and SVG.
std::string hex(Rgb c);
// The i-th colour of a palette of distinguishable line colours (cycles).
Rgb series_color(int i);

}  // namespace runway::viz
