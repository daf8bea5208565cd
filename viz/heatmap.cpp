#include "viz/heatmap.h"

#include <fmt/format.h>

#include <algorithm>

#include "engine/dtype.h"
#include "viz/colormap.h"

namespace runway::viz {

namespace {

constexpr Rgb kInk{30, 30, 30};
constexpr Rgb kMasked{225, 225, 225};
constexpr int kPad = 8;

// The smallest of 1, 2, 5, 10, 20, 50, ... whose spacing is at least min_pixels.
int64_t tick_step(int cell, int min_pixels) {
  for (int64_t base = 1;; base *= 10)
    for (int64_t m : {1, 2, 5})
      if (base * m * cell >= min_pixels) return base * m;
}

std::string short_number(double v) { return fmt::format("{:.3g}", v); }

}  // namespace

int heatmap_cell_size(int64_t n) { return static_cast<int>(std::clamp<int64_t>(640 / std::max<int64_t>(n, 1), 1, 20)); }

std::string byte_label(uint8_t b) {
  if (b == ' ') return "_";
  if (b == '\n') return "/";
  if (b == '\t') return ">";
  if (b >= 33 && b <= 126) return std::string(1, static_cast<char>(b));
  return "?";
}

namespace {

// The colour range: from the data's in-map part unless given; symmetric for signed maps.
struct ColorScale {
  bool signed_values;
  double lo, hi;
  bool flat() const { return !(hi > lo); }
  Rgb operator()(double v) const {
    if (signed_values) return diverging_color(flat() ? 0.0 : v / hi);
    return sequential_color(flat() ? 0.0 : (v - lo) / (hi - lo));
  }
};

bool in_map(const HeatmapOptions& options, int64_t i, int64_t j) { return !options.causal || j <= i; }

ColorScale color_scale(const std::vector<double>& values, int64_t rows, int64_t cols, const HeatmapOptions& options) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const double v = values[static_cast<size_t>(i * cols + j)];
      if (!std::isfinite(v))
        throw Error(fmt::format("render_heatmap '{}': value at ({}, {}) is {}", options.title, i, j, v));
      if (in_map(options, i, j)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
  if (!std::isfinite(lo)) lo = hi = 0;  // an empty causal part (cannot happen with rows >= 1)
  if (std::isfinite(options.vmin)) lo = options.vmin;
  if (std::isfinite(options.vmax)) hi = options.vmax;
  if (options.signed_values) {
    const double m = std::max(std::abs(lo), std::abs(hi));
    lo = -m, hi = m;
  }
  return {options.signed_values, lo, hi};
}

// Where everything goes: the title on top, the key ticks above the grid, the query
// ticks (and token labels) left of it, the key labels and caption under it, and the
// colour bar with its labels to the right.
struct Geometry {
  int64_t rows, cols;
  int cell;
  bool show_labels;
  int text_h;
  int64_t step;  // between index ticks
  int label_band, left, top, grid_w, grid_h;
  std::string lo_text, hi_text, mid_text;
  int bar_x, bar_w;
  int width, height;
};

Geometry heatmap_geometry(int64_t rows, int64_t cols, const HeatmapOptions& options, const ColorScale& scale) {
  Geometry g;
  g.rows = rows, g.cols = cols;
  g.cell = heatmap_cell_size(std::max(rows, cols));
  g.show_labels = !options.labels.empty() && g.cell >= kMinLabelCell;
  g.text_h = Canvas::text_height();
  g.step = tick_step(g.cell, 28);
  g.label_band = g.show_labels ? g.cell + 2 : 0;
  const int y_tick_w = Canvas::text_width(std::to_string(rows - 1));
  g.left = kPad + std::max(y_tick_w + 5 + g.label_band, Canvas::text_width(options.y_caption));
  const int title_h = Canvas::text_height(2);
  g.top = kPad + title_h + kPad + g.text_h + 4 + g.text_h + 2;
  g.grid_w = static_cast<int>(cols) * g.cell, g.grid_h = static_cast<int>(rows) * g.cell;
  g.lo_text = short_number(scale.lo), g.hi_text = short_number(scale.hi);
  g.mid_text = short_number((scale.lo + scale.hi) / 2);
  g.bar_x = g.left + g.grid_w + 16, g.bar_w = 14;
  const int bar_labels_w = std::max({Canvas::text_width(g.lo_text), Canvas::text_width(g.hi_text),
                                     Canvas::text_width(g.mid_text)});
  g.width = std::max(g.bar_x + g.bar_w + 4 + bar_labels_w + kPad, kPad + Canvas::text_width(options.title, 2) + kPad);
  g.height = g.top + g.grid_h + g.label_band + 4 + g.text_h + kPad;
  return g;
}

// Index ticks: above the map for keys, left of it for queries.
void draw_index_ticks(Canvas& canvas, const Geometry& g) {
  for (int64_t j = 0; j < g.cols; j += g.step) {
    const std::string t = std::to_string(j);
    const int cx = g.left + static_cast<int>(j) * g.cell + g.cell / 2;
    canvas.fill_rect(cx, g.top - 4, 1, 3, kInk);
    canvas.text(std::clamp(cx - Canvas::text_width(t) / 2, g.left - 4, g.width - Canvas::text_width(t)),
                g.top - 4 - g.text_h, t, kInk);
  }
  for (int64_t i = 0; i < g.rows; i += g.step) {
    const std::string t = std::to_string(i);
    const int cy = g.top + static_cast<int>(i) * g.cell + g.cell / 2;
    // With token labels beside the rows, a tick mark would read as part of them.
    if (!g.show_labels) canvas.fill_rect(g.left - 3, cy, 3, 1, kInk);
    canvas.text(g.left - g.label_band - 5 - Canvas::text_width(t), cy - 3, t, kInk);
  }
}

// Token labels: one glyph per row (left) and column (below).
void draw_token_labels(Canvas& canvas, const Geometry& g, const std::vector<std::string>& labels) {
  for (int64_t i = 0; i < g.rows; ++i) {
    const std::string& t = labels[static_cast<size_t>(i)];
    canvas.text(g.left - g.label_band + (g.cell - Canvas::text_width(t)) / 2,
                g.top + static_cast<int>(i) * g.cell + (g.cell - 7) / 2, t, kInk);
  }
  for (int64_t j = 0; j < g.cols; ++j) {
    const std::string& t = labels[static_cast<size_t>(j)];
    canvas.text(g.left + static_cast<int>(j) * g.cell + (g.cell - Canvas::text_width(t)) / 2, g.top + g.grid_h + 2, t,
                kInk);
  }
}

// The colour bar, hi at the top, with its range.
void draw_color_bar(Canvas& canvas, const Geometry& g, const ColorScale& scale) {
  for (int y = 0; y < g.grid_h; ++y) {
    const double t = g.grid_h == 1 ? 1.0 : 1.0 - static_cast<double>(y) / (g.grid_h - 1);
    canvas.fill_rect(g.bar_x, g.top + y, g.bar_w, 1, scale(scale.lo + t * (scale.hi - scale.lo)));
  }
  const int bar_text_x = g.bar_x + g.bar_w + 4;
  canvas.text(bar_text_x, g.top, g.hi_text, kInk);
  // Small maps have room for fewer labels (each is 7 pixels tall).
  if (g.grid_h >= 40) canvas.text(bar_text_x, g.top + g.grid_h / 2 - 3, g.mid_text, kInk);
  if (g.grid_h >= 20) canvas.text(bar_text_x, g.top + g.grid_h - 7, g.lo_text, kInk);
}

}  // namespace

Canvas render_heatmap(const std::vector<double>& values, int64_t rows, int64_t cols, const HeatmapOptions& options,
                      HeatmapLayout* layout) {
  if (rows < 1 || cols < 1 || static_cast<int64_t>(values.size()) != rows * cols)
    throw Error(fmt::format("render_heatmap '{}': {} values for a {}x{} map", options.title, values.size(), rows, cols));
  if (!options.labels.empty() && static_cast<int64_t>(options.labels.size()) != std::max(rows, cols))
    throw Error(fmt::format("render_heatmap '{}': {} labels for a {}x{} map", options.title, options.labels.size(),
                            rows, cols));
  const ColorScale scale = color_scale(values, rows, cols, options);
  const Geometry g = heatmap_geometry(rows, cols, options, scale);
  Canvas canvas(g.width, g.height);
  if (layout) *layout = HeatmapLayout{g.left, g.top, g.cell, g.show_labels, scale.lo, scale.hi};

  canvas.text(kPad, kPad, options.title, kInk, 2);
  // Captions: the key axis under the map, the query axis above the row ticks.
  canvas.text(g.left + (g.grid_w - Canvas::text_width(options.x_caption)) / 2, g.top + g.grid_h + g.label_band + 4,
              options.x_caption, kInk);
  canvas.text(kPad, g.top - g.text_h - 2, options.y_caption, kInk);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      canvas.fill_rect(g.left + static_cast<int>(j) * g.cell, g.top + static_cast<int>(i) * g.cell, g.cell, g.cell,
                       in_map(options, i, j) ? scale(values[static_cast<size_t>(i * cols + j)]) : kMasked);
  draw_index_ticks(canvas, g);
  if (g.show_labels) draw_token_labels(canvas, g, options.labels);
  draw_color_bar(canvas, g, scale);
  return canvas;
}

}  // namespace runway::viz
