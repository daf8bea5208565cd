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

}  // namespace

std::string line_chart_svg(const ChartOptions& options, const std::vector<Series>& series) {
  const double inf = std::numeric_limits<double>::infinity();
  double x_lo = inf, x_hi = -inf, y_lo = inf, y_hi = -inf;
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
      x_lo = std::min(x_lo, s.x[i]), x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, s.y[i]), y_hi = std::max(y_hi, s.y[i]);
      if (band && std::isfinite(s.y_low[i])) y_lo = std::min(y_lo, s.y_low[i]);
      if (band && std::isfinite(s.y_high[i])) y_hi = std::max(y_hi, s.y_high[i]);
    }
  }
  if (!std::isfinite(x_lo)) x_lo = options.log2_x ? 1 : 0, x_hi = x_lo + 1, y_lo = 0, y_hi = 1;  // no data
  if (std::isfinite(options.y_min)) y_lo = options.y_min;
  if (std::isfinite(options.y_max)) y_hi = options.y_max;
  if (!(y_hi > y_lo)) y_lo -= 0.5, y_hi += 0.5;
  if (!std::isfinite(options.y_min) || !std::isfinite(options.y_max)) {
    const double pad = 0.05 * (y_hi - y_lo);
    if (!std::isfinite(options.y_min)) y_lo -= pad;
    if (!std::isfinite(options.y_max)) y_hi += pad;
  }
  auto fx = [&](double x) { return options.log2_x ? std::log2(x) : x; };
  double fx_lo = fx(x_lo), fx_hi = fx(x_hi);
  if (!(fx_hi > fx_lo)) fx_lo -= 0.5, fx_hi += 0.5;

  // Plot area inside margins; the legend goes to the right of the plot.
  size_t legend_chars = 0;
  for (const Series& s : series) legend_chars = std::max(legend_chars, s.name.size());
  const double legend_w = series.empty() ? 0 : 34 + 6.5 * static_cast<double>(legend_chars);
  const double ml = 62, mr = 16 + legend_w, mt = 34, mb = 46;
  const double W = options.width, H = options.height;
  const double pw = W - ml - mr, ph = H - mt - mb;
  auto px = [&](double x) { return ml + (fx(x) - fx_lo) / (fx_hi - fx_lo) * pw; };
  auto py = [&](double y) { return mt + (1 - (y - y_lo) / (y_hi - y_lo)) * ph; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      W, H);
  svg += fmt::format("<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
                     ml + pw / 2, escape_xml(options.title));
  // Grid and ticks.
  for (double t : nice_ticks(y_lo, y_hi)) {
    if (t < y_lo || t > y_hi) continue;
    svg += fmt::format("<line x1=\"{0:.1f}\" x2=\"{1:.1f}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#e4e4e4\"/>"
                       "<text x=\"{3:.1f}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
                       ml, ml + pw, py(t), ml - 6, py(t) + 4, tick_text(t));
  }
  std::vector<double> x_ticks;
  if (options.log2_x) {
    for (double e = std::ceil(fx_lo - 1e-9); e <= fx_hi + 1e-9; e += 1) x_ticks.push_back(std::exp2(e));
  } else {
    x_ticks = nice_ticks(fx_lo, fx_hi);
    if (options.integer_x && x_ticks.size() > 1 && x_ticks[1] - x_ticks[0] < 1) {
      x_ticks.clear();
      for (double t = std::ceil(fx_lo); t <= fx_hi; t += 1) x_ticks.push_back(t);
    }
  }
  for (double t : x_ticks) {
    if (fx(t) < fx_lo - 1e-9 || fx(t) > fx_hi + 1e-9) continue;
    svg += fmt::format("<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1:.1f}\" y2=\"{2:.1f}\" stroke=\"#e4e4e4\"/>"
                       "<text x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4}</text>\n",
                       px(t), mt, mt + ph, mt + ph + 16, tick_text(t));
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", ml, mt, pw,
                     ph);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", ml + pw / 2, H - 10,
                     escape_xml(options.x_label));
  svg += fmt::format("<text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n", mt + ph / 2,
                     escape_xml(options.y_label));

  // Series: bands first (under the lines), then the lines, clipped to the plot.
  svg += fmt::format("<clipPath id=\"plot\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n", ml, mt,
                     pw, ph);
  svg += "<g clip-path=\"url(#plot)\">\n";
  for (const Series& s : series) {
    if (s.y_low.empty()) continue;
    std::string upper, lower;
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y_low[i]) && std::isfinite(s.y_high[i])) {
        upper += fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y_high[i]));
        lower = fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y_low[i])) + lower;
      }
    if (!upper.empty())
      svg += fmt::format("<polygon points=\"{}{}\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n", upper, lower,
                         hex(series_color(s.color)));
  }
  for (const Series& s : series) {
    const std::string color = hex(series_color(s.color));
    std::string points;
    auto flush = [&]() {
      if (!points.empty())
        svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{}/>\n", points,
                           color, s.dashed ? " stroke-dasharray=\"6 4\"" : "");
      points.clear();
    };
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        flush();
        continue;
      }
      points += fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y[i]));
      if (s.markers)
        svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(s.x[i]), py(s.y[i]), color);
    }
    flush();
  }
  svg += "</g>\n";
  // Legend.
  double ly = mt + 8;
  for (const Series& s : series) {
    const double lx = ml + pw + 12;
    svg += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"2\"{4}/>"
                       "<text x=\"{5}\" y=\"{6}\">{7}</text>\n",
                       lx, lx + 22, ly, hex(series_color(s.color)), s.dashed ? " stroke-dasharray=\"6 4\"" : "",
                       lx + 28, ly + 4, escape_xml(s.name));
    ly += 18;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace runway::viz
