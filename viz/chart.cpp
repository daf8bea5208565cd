#include "viz/chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "engine/dtype.h"
#include "viz/colormap.h"

namespace runway::viz {

std::string escape_xml(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

ChartOptions chart_options(std::string title, std::string x_label, std::string y_label) {
  ChartOptions o;
  o.title = std::move(title);
  o.x_label = std::move(x_label);
  o.y_label = std::move(y_label);
  return o;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag * 10;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (mag * m >= raw) {
      step = mag * m;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

namespace {

std::string tick_text(double v) {
  std::string s = fmt::format("{:.4g}", v);
  return s;
}

// The extent of the finite points (bands included), after checking the series' shapes.
struct Extent {
  double x_lo, x_hi, y_lo, y_hi;
};

Extent data_extent(const ChartOptions& options, const std::vector<Series>& series) {
  const double inf = std::numeric_limits<double>::infinity();
  Extent e{inf, -inf, inf, -inf};
  for (const Series& s : series) {
    if (s.x.size() != s.y.size())
      throw Error(fmt::format("chart '{}': series '{}' has {} x values and {} y values", options.title, s.name,
                              s.x.size(), s.y.size()));
    const bool band = !s.y_low.empty() || !s.y_high.empty();
    if (band && (s.y_low.size() != s.y.size() || s.y_high.size() != s.y.size()))
      throw Error(fmt::format("chart '{}': series '{}' band lengths differ from its {} points", options.title, s.name,
                              s.y.size()));
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (options.log2_x && !(s.x[i] > 0))
        throw Error(fmt::format("chart '{}': log2 x axis needs x > 0, series '{}' has {}", options.title, s.name,
                                s.x[i]));
      if (!std::isfinite(s.y[i])) continue;
      e.x_lo = std::min(e.x_lo, s.x[i]), e.x_hi = std::max(e.x_hi, s.x[i]);
      e.y_lo = std::min(e.y_lo, s.y[i]), e.y_hi = std::max(e.y_hi, s.y[i]);
      if (band && std::isfinite(s.y_low[i])) e.y_lo = std::min(e.y_lo, s.y_low[i]);
      if (band && std::isfinite(s.y_high[i])) e.y_hi = std::max(e.y_hi, s.y_high[i]);
    }
  }
  return e;
}

// Where things go: the axes' ranges (x in log2 when asked) and the plot area inside
// the margins, with the legend to the right of the plot.
struct Frame {
  bool log2_x;
  double fx_lo, fx_hi, y_lo, y_hi;
  double ml, mt, pw, ph, W, H;
  double fx(double x) const { return log2_x ? std::log2(x) : x; }
  double px(double x) const { return ml + (fx(x) - fx_lo) / (fx_hi - fx_lo) * pw; }
  double py(double y) const { return mt + (1 - (y - y_lo) / (y_hi - y_lo)) * ph; }
};

Frame chart_frame(const ChartOptions& options, const std::vector<Series>& series) {
  Extent e = data_extent(options, series);
  if (!std::isfinite(e.x_lo)) e.x_lo = options.log2_x ? 1 : 0, e.x_hi = e.x_lo + 1, e.y_lo = 0, e.y_hi = 1;  // no data
  if (std::isfinite(options.y_min)) e.y_lo = options.y_min;
  if (std::isfinite(options.y_max)) e.y_hi = options.y_max;
  if (!(e.y_hi > e.y_lo)) e.y_lo -= 0.5, e.y_hi += 0.5;
  if (!std::isfinite(options.y_min) || !std::isfinite(options.y_max)) {
    const double pad = 0.05 * (e.y_hi - e.y_lo);
    if (!std::isfinite(options.y_min)) e.y_lo -= pad;
    if (!std::isfinite(options.y_max)) e.y_hi += pad;
  }
  Frame f{};
  f.log2_x = options.log2_x;
  f.fx_lo = f.fx(e.x_lo), f.fx_hi = f.fx(e.x_hi);
  if (!(f.fx_hi > f.fx_lo)) f.fx_lo -= 0.5, f.fx_hi += 0.5;
  f.y_lo = e.y_lo, f.y_hi = e.y_hi;
  size_t legend_chars = 0;
  for (const Series& s : series) legend_chars = std::max(legend_chars, s.name.size());
  const double legend_w = series.empty() ? 0 : 34 + 6.5 * static_cast<double>(legend_chars);
  const double mr = 16 + legend_w, mb = 46;
  f.ml = 62, f.mt = 34;
  f.W = options.width, f.H = options.height;
  f.pw = f.W - f.ml - mr, f.ph = f.H - f.mt - mb;
  return f;
}

// The title, the grid with its tick labels, the plot's border and the axis labels.
std::string axes_svg(const ChartOptions& options, const Frame& f) {
  std::string svg = fmt::format("<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
                                f.ml + f.pw / 2, escape_xml(options.title));
  for (double t : nice_ticks(f.y_lo, f.y_hi)) {
    if (t < f.y_lo || t > f.y_hi) continue;
    svg += fmt::format("<line x1=\"{0:.1f}\" x2=\"{1:.1f}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#e4e4e4\"/>"
                       "<text x=\"{3:.1f}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
                       f.ml, f.ml + f.pw, f.py(t), f.ml - 6, f.py(t) + 4, tick_text(t));
  }
  std::vector<double> x_ticks;
  if (options.log2_x) {
    for (double e = std::ceil(f.fx_lo - 1e-9); e <= f.fx_hi + 1e-9; e += 1) x_ticks.push_back(std::exp2(e));
  } else {
    x_ticks = nice_ticks(f.fx_lo, f.fx_hi);
    if (options.integer_x && x_ticks.size() > 1 && x_ticks[1] - x_ticks[0] < 1) {
      x_ticks.clear();
      for (double t = std::ceil(f.fx_lo); t <= f.fx_hi; t += 1) x_ticks.push_back(t);
    }
  }
  for (double t : x_ticks) {
    if (f.fx(t) < f.fx_lo - 1e-9 || f.fx(t) > f.fx_hi + 1e-9) continue;
    svg += fmt::format("<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1:.1f}\" y2=\"{2:.1f}\" stroke=\"#e4e4e4\"/>"
                       "<text x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4}</text>\n",
                       f.px(t), f.mt, f.mt + f.ph, f.mt + f.ph + 16, tick_text(t));
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", f.ml, f.mt,
                     f.pw, f.ph);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", f.ml + f.pw / 2, f.H - 10,
                     escape_xml(options.x_label));
  svg += fmt::format("<text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                     f.mt + f.ph / 2, escape_xml(options.y_label));
  return svg;
}

// The min..max band of a series, as one polygon (upper edge forward, lower edge back).
std::string band_svg(const Frame& f, const Series& s) {
  if (s.y_low.empty()) return "";
  std::string upper, lower;
  for (size_t i = 0; i < s.x.size(); ++i)
    if (std::isfinite(s.y_low[i]) && std::isfinite(s.y_high[i])) {
      upper += fmt::format("{:.1f},{:.1f} ", f.px(s.x[i]), f.py(s.y_high[i]));
      lower = fmt::format("{:.1f},{:.1f} ", f.px(s.x[i]), f.py(s.y_low[i])) + lower;
    }
  if (upper.empty()) return "";
  return fmt::format("<polygon points=\"{}{}\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n", upper, lower,
                     hex(series_color(s.color)));
}

// A series' line, broken where a value is not finite, and its markers.
std::string line_svg(const Frame& f, const Series& s) {
  std::string svg;
  const std::string color = hex(series_color(s.color));
  std::string points;
  auto flush = [&]() {
    if (!points.empty())
      svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{}/>\n", points, color,
                         s.dashed ? " stroke-dasharray=\"6 4\"" : "");
    points.clear();
  };
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (!std::isfinite(s.y[i])) {
      flush();
      continue;
    }
    points += fmt::format("{:.1f},{:.1f} ", f.px(s.x[i]), f.py(s.y[i]));
    if (s.markers)
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", f.px(s.x[i]), f.py(s.y[i]), color);
  }
  flush();
  return svg;
}

std::string legend_svg(const Frame& f, const std::vector<Series>& series) {
  std::string svg;
  double ly = f.mt + 8;
  for (const Series& s : series) {
    const double lx = f.ml + f.pw + 12;
    svg += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"2\"{4}/>"
                       "<text x=\"{5}\" y=\"{6}\">{7}</text>\n",
                       lx, lx + 22, ly, hex(series_color(s.color)), s.dashed ? " stroke-dasharray=\"6 4\"" : "",
                       lx + 28, ly + 4, escape_xml(s.name));
    ly += 18;
  }
  return svg;
}

}  // namespace

std::string line_chart_svg(const ChartOptions& options, const std::vector<Series>& series) {
  const Frame f = chart_frame(options, series);
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      f.W, f.H);
  svg += axes_svg(options, f);
  // Series: bands first (under the lines), then the lines, clipped to the plot.
  svg += fmt::format("<clipPath id=\"plot\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n", f.ml,
                     f.mt, f.pw, f.ph);
  svg += "<g clip-path=\"url(#plot)\">\n";
  for (const Series& s : series) svg += band_svg(f, s);
  for (const Series& s : series) svg += line_svg(f, s);
  svg += "</g>\n";
  svg += legend_svg(f, series);
  svg += "</svg>\n";
  return svg;
}

}  // namespace runway::viz
