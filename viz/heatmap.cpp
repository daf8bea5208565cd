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

Canvas render_heatmap(const std::vector<double>& values, int64_t rows, int64_t cols, const HeatmapOptions& options,
                      HeatmapLayout* layout) {
  if (rows < 1 || cols < 1 || static_cast<int64_t>(values.size()) != rows * cols)
    throw Error(fmt::format("render_heatmap '{}': {} values for a {}x{} map", options.title, values.size(), rows, cols));
  if (!options.labels.empty() && static_cast<int64_t>(options.labels.size()) != std::max(rows, cols))
    throw Error(fmt::format("render_heatmap '{}': {} labels for a {}x{} map", options.title, options.labels.size(),
                            rows, cols));
  auto in_map = [&](int64_t i, int64_t j) { return !options.causal || j <= i; };
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const double v = values[static_cast<size_t>(i * cols + j)];
      if (!std::isfinite(v))
        throw Error(fmt::format("render_heatmap '{}': value at ({}, {}) is {}", options.title, i, j, v));
      if (in_map(i, j)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
  if (!std::isfinite(lo)) lo = hi = 0;  // an empty causal part (cannot happen with rows >= 1)
  if (std::isfinite(options.vmin)) lo = options.vmin;
  if (std::isfinite(options.vmax)) hi = options.vmax;
  if (options.signed_values) {
    const double m = std::max(std::abs(lo), std::abs(hi));
    lo = -m, hi = m;
  }
  const bool flat = !(hi > lo);
  auto color_of = [&](double v) {
    if (options.signed_values) return diverging_color(flat ? 0.0 : v / hi);
    return sequential_color(flat ? 0.0 : (v - lo) / (hi - lo));
  };

  // ---- layout ----
  const int cell = heatmap_cell_size(std::max(rows, cols));
  const bool show_labels = !options.labels.empty() && cell >= kMinLabelCell;
  const int text_h = Canvas::text_height();
  const int64_t step = tick_step(cell, 28);
  const int label_band = show_labels ? cell + 2 : 0;
  const int y_tick_w = Canvas::text_width(std::to_string(rows - 1));
  const int left = kPad + std::max(y_tick_w + 5 + label_band, Canvas::text_width(options.y_caption));
  const int title_h = Canvas::text_height(2);
  const int top = kPad + title_h + kPad + text_h + 4 + text_h + 2;
  const int grid_w = static_cast<int>(cols) * cell, grid_h = static_cast<int>(rows) * cell;
  const std::string lo_text = short_number(lo), hi_text = short_number(hi),
                    mid_text = short_number((lo + hi) / 2);
  const int bar_x = left + grid_w + 16, bar_w = 14;
  const int bar_labels_w = std::max({Canvas::text_width(lo_text), Canvas::text_width(hi_text),
                                     Canvas::text_width(mid_text)});
  const int width = std::max(bar_x + bar_w + 4 + bar_labels_w + kPad, kPad + Canvas::text_width(options.title, 2) + kPad);
  const int height = top + grid_h + label_band + 4 + text_h + kPad;
  Canvas canvas(width, height);
  if (layout) *layout = HeatmapLayout{left, top, cell, show_labels, lo, hi};

  canvas.text(kPad, kPad, options.title, kInk, 2);
  // Captions: the key axis under the map, the query axis above the row ticks.
  canvas.text(left + (grid_w - Canvas::text_width(options.x_caption)) / 2, top + grid_h + label_band + 4,
              options.x_caption, kInk);
  canvas.text(kPad, top - text_h - 2, options.y_caption, kInk);

  // ---- cells ----
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      canvas.fill_rect(left + static_cast<int>(j) * cell, top + static_cast<int>(i) * cell, cell, cell,
                       in_map(i, j) ? color_of(values[static_cast<size_t>(i * cols + j)]) : kMasked);

  // ---- index ticks (above the map for keys, left of it for queries) ----
  for (int64_t j = 0; j < cols; j += step) {
    const std::string t = std::to_string(j);
    const int cx = left + static_cast<int>(j) * cell + cell / 2;
    canvas.fill_rect(cx, top - 4, 1, 3, kInk);
    canvas.text(std::clamp(cx - Canvas::text_width(t) / 2, left - 4, width - Canvas::text_width(t)), top - 4 - text_h,
                t, kInk);
  }
  for (int64_t i = 0; i < rows; i += step) {
    const std::string t = std::to_string(i);
    const int cy = top + static_cast<int>(i) * cell + cell / 2;
    // With token labels beside the rows, a tick mark would read as part of them.
    if (!show_labels) canvas.fill_rect(left - 3, cy, 3, 1, kInk);
    canvas.text(left - label_band - 5 - Canvas::text_width(t), cy - 3, t, kInk);
  }

  // ---- token labels: one glyph per row (left) and column (below) ----
  if (show_labels) {
    for (int64_t i = 0; i < rows; ++i) {
      const std::string& t = options.labels[static_cast<size_t>(i)];
      canvas.text(left - label_band + (cell - Canvas::text_width(t)) / 2,
                  top + static_cast<int>(i) * cell + (cell - 7) / 2, t, kInk);
    }
    for (int64_t j = 0; j < cols; ++j) {
      const std::string& t = options.labels[static_cast<size_t>(j)];
      canvas.text(left + static_cast<int>(j) * cell + (cell - Canvas::text_width(t)) / 2, top + grid_h + 2, t, kInk);
    }
  }

  // ---- colour bar: hi at the top ----
  for (int y = 0; y < grid_h; ++y) {
    const double t = grid_h == 1 ? 1.0 : 1.0 - static_cast<double>(y) / (grid_h - 1);
    canvas.fill_rect(bar_x, top + y, bar_w, 1, color_of(lo + t * (hi - lo)));
  }
  const int bar_text_x = bar_x + bar_w + 4;
  canvas.text(bar_text_x, top, hi_text, kInk);
  // Small maps have room for fewer labels (each is 7 pixels tall).
  if (grid_h >= 40) canvas.text(bar_text_x, top + grid_h / 2 - 3, mid_text, kInk);
  if (grid_h >= 20) canvas.text(bar_text_x, top + grid_h - 7, lo_text, kInk);
  return canvas;
}

}  // namespace runway::viz
