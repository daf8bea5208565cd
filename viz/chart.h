// Line charts as standalone SVG text (loss curves, the extrapolation curve, cascade
// curves): labelled axes with 1-2-5 ticks, a legend, optional log2 x axis, and an
// optional shaded band per series (the spread over seeds).
#pragma once

#include <string>
#include <vector>

namespace runway::viz {

struct Series {
  std::string name;
  std::vector<double> x, y;           // non-finite y: a gap in the line
  std::vector<double> y_low, y_high;  // optional band (same length as y), e.g. min..max over seeds
  int color = 0;                      // index into series_color()
  bool dashed = false;
  bool markers = false;
};

struct ChartOptions {
  std::string title, x_label, y_label;
  bool log2_x = false;  // x values must be > 0
  bool integer_x = false;  // x ticks at whole numbers only (layers, counts)
  int width = 560, height = 340;
  // Fixed y range when finite (else from the data, padded).
  double y_min = 0.0 / 0.0, y_max = 0.0 / 0.0;
};

// The options with the three texts every chart needs; the rest as defaulted above.
ChartOptions chart_options(std::string title, std::string x_label, std::string y_label);

// Error when a series' x and y (or band) lengths differ, or log2_x with x <= 0.
std::string line_chart_svg(const ChartOptions& options, const std::vector<Series>& series);

// Ticks covering [lo, hi] at a 1-2-5 step, about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

// Escapes &, <, >, " and ' for HTML/SVG text and attributes.
std::string escape_xml(const std::string& s);

}  // namespace runway::viz
