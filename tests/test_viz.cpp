// Pictures and pages: colour scales, the raster canvas and its PNG encoding, heatmaps,
// SVG charts, and the report's spread over seeds and its errors. The inspect folder,
// written from a model's run, is tested in test_lab.cpp.
#include <catch2/catch.hpp>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#include <stb/stb_image.h>

#include <filesystem>
#include <limits>
#include <regex>

#include "test_support.h"
#include "viz/canvas.h"
#include "viz/chart.h"
#include "viz/colormap.h"
#include "viz/heatmap.h"
#include "viz/report.h"
#include "viz/stats.h"

using Catch::Matchers::Contains;
using namespace runway;
using namespace runway::viz;
using runway::testing::TempDir;

namespace {

bool same(Rgb a, Rgb b) { return a.r == b.r && a.g == b.g && a.b == b.b; }

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("viz: colour scales hit their anchors and clamp") {
  CHECK(same(sequential_color(0), {68, 1, 84}));
  CHECK(same(sequential_color(1), {253, 231, 37}));
  CHECK(same(sequential_color(-3), sequential_color(0)));
  CHECK(same(sequential_color(7), sequential_color(1)));
  CHECK(same(diverging_color(0), {247, 247, 247}));
  CHECK(same(diverging_color(-1), {33, 102, 172}));
  CHECK(same(diverging_color(1), {178, 24, 43}));
  CHECK(hex({255, 0, 16}) == "#ff0010");
  // Halfway between the two anchors around 0.0625 of viridis.
  const Rgb mid = sequential_color(1.0 / 16);
  CHECK(mid.r == 70);  // round((68 + 71) / 2) = 69.5 -> 70
  CHECK(mid.g == 23);  // round((1 + 44) / 2) = 22.5 -> 23
}

TEST_CASE("viz: canvas rectangles clip, text stays inside its box, PNG decodes to the pixels") {
  Canvas c(40, 20, {255, 255, 255});
  c.fill_rect(-5, -5, 10, 10, {255, 0, 0});  // clipped to the top-left 5 x 5
  CHECK(same(c.at(4, 4), {255, 0, 0}));
  CHECK(same(c.at(5, 5), {255, 255, 255}));
  c.fill_rect(38, 18, 10, 10, {0, 0, 255});
  CHECK(same(c.at(39, 19), {0, 0, 255}));
  CHECK_THROWS_WITH(c.at(40, 0), Contains("outside 40x20"));

  const int w = Canvas::text_width("Hi");
  REQUIRE(w > 0);
  c.text(10, 6, "Hi", {0, 0, 0});
  int inked = 0;
  for (int y = 0; y < 20; ++y)
    for (int x = 6; x < 38; ++x)
      if (same(c.at(x, y), {0, 0, 0})) {
        ++inked;
        CHECK(x >= 10);
        CHECK(x < 10 + w);
        CHECK(y >= 6);
        CHECK(y < 6 + Canvas::text_height());
      }
  CHECK(inked > 10);
  CHECK(Canvas::text_width("") == 0);

  const std::vector<uint8_t> png = c.encode_png();
  int pw = 0, ph = 0, channels = 0;
  unsigned char* decoded = stbi_load_from_memory(png.data(), static_cast<int>(png.size()), &pw, &ph, &channels, 3);
  REQUIRE(decoded != nullptr);
  CHECK(pw == 40);
  CHECK(ph == 20);
  bool all_equal = true;
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 40; ++x) {
      const unsigned char* p = decoded + (y * 40 + x) * 3;
      all_equal = all_equal && same({p[0], p[1], p[2]}, c.at(x, y));
    }
  stbi_image_free(decoded);
  CHECK(all_equal);
  CHECK_THROWS_WITH(Canvas(0, 5), Contains("size 0x5"));
}

TEST_CASE("viz: heatmap cells take the colour of their value, and above the diagonal is grey") {
  // 3 x 3 causal map with range [0, 0.8] (vmin fixed at 0).
  const std::vector<double> m = {0.8, 9, 9,  //
                                 0.2, 0.6, 9,
                                 0.0, 0.4, 0.4};
  HeatmapOptions o;
  o.title = "t";
  o.labels = {"a", "b", "_"};
  o.vmin = 0;
  HeatmapLayout layout;
  const Canvas c = render_heatmap(m, 3, 3, o, &layout);
  CHECK(layout.cell == 20);
  CHECK(layout.labels_drawn);
  CHECK(layout.vmin == 0);
  CHECK(layout.vmax == Approx(0.8));  // the 9s above the diagonal are not part of the range
  auto cell = [&](int i, int j) { return c.at(layout.grid_x + j * layout.cell + 3, layout.grid_y + i * layout.cell + 3); };
  CHECK(same(cell(0, 0), sequential_color(1.0)));
  CHECK(same(cell(1, 0), sequential_color(0.25)));
  CHECK(same(cell(2, 1), sequential_color(0.5)));
  CHECK(same(cell(2, 0), sequential_color(0.0)));
  CHECK(same(cell(0, 1), {225, 225, 225}));
  CHECK(same(cell(0, 2), {225, 225, 225}));

  SECTION("signed maps are symmetric around white") {
    const std::vector<double> d = {0, 0, 0, -0.1, 0.05, 0, 0.2, 0, 0};
    HeatmapOptions s;
    s.signed_values = true;
    HeatmapLayout l2;
    const Canvas cs = render_heatmap(d, 3, 3, s, &l2);
    CHECK(l2.vmin == Approx(-0.2));
    CHECK(l2.vmax == Approx(0.2));
    CHECK(same(cs.at(l2.grid_x + 3, l2.grid_y + 3), diverging_color(0)));
    CHECK(same(cs.at(l2.grid_x + 3, l2.grid_y + 2 * l2.cell + 3), diverging_color(1)));
    CHECK(same(cs.at(l2.grid_x + 3, l2.grid_y + l2.cell + 3), diverging_color(-0.5)));
  }
  SECTION("large maps get small cells and no token labels") {
    const int64_t T = 200;
    std::vector<double> big(T * T, 0.0);
    HeatmapOptions b;
    b.labels.assign(T, "x");
    HeatmapLayout l3;
    render_heatmap(big, T, T, b, &l3);
    CHECK(l3.cell == 3);
    CHECK_FALSE(l3.labels_drawn);
  }
  SECTION("bad input") {
    CHECK_THROWS_WITH(render_heatmap({1, 2}, 3, 3, o), Contains("2 values for a 3x3 map"));
    HeatmapOptions few;
    few.labels = {"a"};
    CHECK_THROWS_WITH(render_heatmap(m, 3, 3, few), Contains("1 labels"));
    std::vector<double> nan = m;
    nan[3] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH(render_heatmap(nan, 3, 3, o), Contains("value at (1, 0) is nan"));
  }
}

TEST_CASE("viz: byte labels are one printable glyph") {
  CHECK(byte_label('a') == "a");
  CHECK(byte_label(' ') == "_");
  CHECK(byte_label('\n') == "/");
  CHECK(byte_label(0xC3) == "?");
}

TEST_CASE("viz: SVG line charts draw each series, escape text, and check their input") {
  Series a{"loss <std>", {1, 2, 3}, {3, 2, 1.5}, {}, {}, 0, false, false};
  Series b{"rewired", {1, 2, 3}, {3.1, std::numeric_limits<double>::quiet_NaN(), 1.4}, {2.9, 0, 1.3}, {3.3, 0, 1.5}, 1, true, true};
  ChartOptions o;
  o.title = "T & t";
  o.x_label = "step";
  o.y_label = "bits/byte";
  const std::string svg = line_chart_svg(o, {a, b});
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("loss &lt;std&gt;") != std::string::npos);
  CHECK(svg.find("T &amp; t") != std::string::npos);
  // a: one polyline; b: two pieces around its NaN; plus the band polygon and 2 markers.
  CHECK(count(svg, "<polyline") == 3);
  CHECK(count(svg, "<polygon") == 1);
  CHECK(count(svg, "<circle") == 2);
  CHECK(count(svg, "stroke-dasharray") == 3);  // b's two line pieces and its legend entry
  Series bad{"bad", {1, 2}, {1}, {}, {}, 0, false, false};
  CHECK_THROWS_WITH(line_chart_svg(o, {bad}), Contains("series 'bad' has 2 x values and 1 y values"));
  ChartOptions log;
  log.log2_x = true;
  Series zero{"z", {0, 1}, {1, 1}, {}, {}, 0, false, false};
  CHECK_THROWS_WITH(line_chart_svg(log, {zero}), Contains("log2 x axis needs x > 0"));
}

TEST_CASE("viz: nice ticks step by 1, 2 or 5 times a power of ten") {
  const std::vector<double> t = nice_ticks(0, 1, 5);
  REQUIRE(t.size() == 6);
  CHECK(t[1] == Approx(0.2));
  CHECK(t[5] == Approx(1.0));
  const std::vector<double> u = nice_ticks(3.3, 8.1, 6);
  CHECK(u.front() == Approx(4));
  CHECK(u.back() == Approx(8));
  CHECK(escape_xml("a\"b'<") == "a&quot;b&#39;&lt;");
}

TEST_CASE("report: spread over seeds, and a missing run file named in the error") {
  const Spread s = spread_of({1.0, 3.0, std::numeric_limits<double>::quiet_NaN(), 2.0});
  CHECK(s.count == 3);
  CHECK(s.mean == Approx(2.0));
  CHECK(s.sd == Approx(1.0));  // sample sd of 1, 2, 3
  CHECK(s.min == 1.0);
  CHECK(s.max == 3.0);
  CHECK(spread_of({5.0}).sd == 0);
  CHECK(spread_of({}).count == 0);

  TempDir dir;
  std::filesystem::create_directories(dir / "runs/a");
  runway::testing::write_bytes(dir / "runs/a/config.json", "{}");
  CHECK_THROWS_WITH(write_report(dir.path, {{"a", 1, dir / "runs/a", dir / "runs/a/inspect", 0}}),
                    Contains("run 'a (seed 1)': cannot read") && Contains("eval.json"));
  runway::testing::write_bytes(dir / "runs/a/eval.json", "{not json");
  CHECK_THROWS_WITH(write_report(dir.path, {{"a", 1, dir / "runs/a", dir / "runs/a/inspect", 0}}),
                    Contains("eval.json' is not valid JSON"));
  CHECK_THROWS_WITH(write_report(dir.path, {}), Contains("no runs"));
}

TEST_CASE("stats: Student t quantiles and the paired difference with its 95% interval, by hand") {
  using runway::viz::paired_difference;
  using runway::viz::t_quantile_975;
  // Published two-sided 95% values (any t table).
  CHECK(t_quantile_975(1) == Approx(12.706));
  CHECK(t_quantile_975(2) == Approx(4.303));
  CHECK(t_quantile_975(4) == Approx(2.776));
  CHECK(t_quantile_975(30) == Approx(2.042));
  // Beyond the table, the expansion against 6-digit values (R: qt(0.975, df)).
  CHECK(t_quantile_975(40) == Approx(2.021075).margin(1e-4));
  CHECK(t_quantile_975(60) == Approx(2.000298).margin(1e-4));
  CHECK(t_quantile_975(120) == Approx(1.979930).margin(1e-4));
  CHECK(t_quantile_975(100000) == Approx(1.959988).margin(1e-4));
  CHECK_THROWS_WITH(t_quantile_975(0), Contains("degrees of freedom"));

  // Seeds 1, 2, 3 in both; seed 4 only in base, seed 5 only in other, seed 6 NaN: left out.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::map<uint64_t, double> base{{1, 2.0}, {2, 2.5}, {3, 1.8}, {4, 9.0}, {6, nan}};
  const std::map<uint64_t, double> other{{1, 1.9}, {2, 2.2}, {3, 1.9}, {5, 0.0}, {6, 1.0}};
  // d = -0.1, -0.3, +0.1: mean -0.1; sd = sqrt((0 + 0.04 + 0.04) / 2) = 0.2;
  // half width = 4.303 * 0.2 / sqrt(3) = 0.496867.
  const auto p = paired_difference(base, other);
  CHECK(p.n == 3);
  CHECK(p.mean == Approx(-0.1));
  CHECK(p.sd == Approx(0.2));
  CHECK(p.low == Approx(-0.1 - 0.496867).epsilon(1e-5));
  CHECK(p.high == Approx(-0.1 + 0.496867).epsilon(1e-5));
  CHECK_FALSE(p.excludes_zero());
  // A consistent difference: d = 1.0, 1.1, 0.9 -> mean 1, sd 0.1, interval [0.7516, 1.2484].
  const auto q = paired_difference({{1, 0.0}, {2, 0.0}, {3, 0.0}}, {{1, 1.0}, {2, 1.1}, {3, 0.9}});
  CHECK(q.low == Approx(1 - 4.303 * 0.1 / std::sqrt(3.0)));
  CHECK(q.excludes_zero());
  // One pair: the mean, no interval; none: NaN.
  const auto one = paired_difference({{1, 1.0}}, {{1, 3.0}});
  CHECK(one.n == 1);
  CHECK(one.mean == 2.0);
  CHECK(std::isnan(one.low));
  CHECK_FALSE(one.excludes_zero());
  CHECK(std::isnan(paired_difference({{1, 1.0}}, {{2, 1.0}}).mean));
}
