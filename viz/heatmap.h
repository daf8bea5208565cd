// Heatmaps of attention-shaped matrices (A, P, R, A', A' - A) as PNG pictures: a title,
// index ticks on both axes, one token label per row and column when the cells are big
// enough to read one, and a colour bar with its range.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "viz/canvas.h"

namespace runway::viz {

struct HeatmapOptions {
  std::string title;
  std::vector<std::string> labels;  // one short label per position (rows and columns); empty: none
  bool signed_values = false;       // diverging scale, symmetric around 0 (for differences)
  bool causal = true;               // cells above the diagonal (j > i) are not part of the map: grey
  // Colour range; NaN: from the data (the causal part when causal). A signed map uses
  // [-m, m] with m = max(|vmin|, |vmax|).
  double vmin = std::numeric_limits<double>::quiet_NaN();
  double vmax = std::numeric_limits<double>::quiet_NaN();
  std::string x_caption = "key j";
  std::string y_caption = "query i";
};

// Cell size in pixels for an n x n map: about 640 pixels across, 1..20 per cell.
int heatmap_cell_size(int64_t n);
// Labels are drawn when a cell is at least this many pixels (a glyph is 5 x 7).
constexpr int kMinLabelCell = 9;

// Where the cells landed: cell (i, j) covers x in [grid_x + j cell, grid_x + (j+1) cell),
// y likewise with i; the colour range actually used.
struct HeatmapLayout {
  int grid_x = 0, grid_y = 0, cell = 0;
  bool labels_drawn = false;
  double vmin = 0, vmax = 0;
};

// values: row-major rows x cols. Non-finite values are an error naming the first one.
Canvas render_heatmap(const std::vector<double>& values, int64_t rows, int64_t cols, const HeatmapOptions& options,
                      HeatmapLayout* layout = nullptr);

// A one-glyph label for a byte: printable ASCII as itself, space as '_', newline as '/',
// tab as '>', other bytes as '?'.
std::string byte_label(uint8_t b);

}  // namespace runway::viz
