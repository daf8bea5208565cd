#include "viz/report.h"
#include "viz/stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "engine/dtype.h"
#include "viz/chart.h"
#include "viz/colormap.h"
#include "viz/html.h"

namespace runway::viz {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kLn2 = std::log(2.0);

json read_json(const std::string& path, const std::string& who) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("report: run '{}': cannot read '{}'", who, path));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(fmt::format("report: run '{}': '{}' is not valid JSON: {}", who, path, e.what()));
  }
}

double number_or_nan(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : kNaN;
}

struct RunData {
  ReportRun run;
  std::string name;  // "label (seed N)" for messages
  json config, eval, inspect;
  std::vector<double> steps, train_bits;       // every step
  std::vector<double> val_steps, val_bits;     // evaluated steps
  double params = kNaN;
};

RunData load_run(const ReportRun& run) {
  RunData d;
  d.run = run;
  d.name = fmt::format("{} (seed {})", run.label, run.seed);
  d.config = read_json((fs::path(run.dir) / "config.json").string(), d.name);
  d.eval = read_json((fs::path(run.dir) / "eval.json").string(), d.name);
  d.inspect = read_json((fs::path(run.inspect_dir) / "inspect.json").string(), d.name);
  d.params = number_or_nan(d.eval, "parameter_count");
  const std::string metrics_path = (fs::path(run.dir) / "metrics.jsonl").string();
  std::ifstream in(metrics_path);
  if (!in) throw Error(fmt::format("report: run '{}': cannot read '{}'", d.name, metrics_path));
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      const json m = json::parse(line);
      d.steps.push_back(m.at("step").get<double>());
      d.train_bits.push_back(m.at("loss").get<double>() / kLn2);
      if (m.contains("val_loss")) {
        d.val_steps.push_back(d.steps.back());
        d.val_bits.push_back(m["val_loss"].get<double>() / kLn2);
      }
    } catch (const json::exception& e) {
      throw Error(fmt::format("report: run '{}': '{}' line {}: {}", d.name, metrics_path, n, e.what()));
    }
  }
  if (d.steps.empty()) throw Error(fmt::format("report: run '{}': '{}' has no steps", d.name, metrics_path));
  return d;
}

struct Group {
  std::string label;
  std::vector<const RunData*> runs;
};

std::string relative(const std::string& path, const std::string& base) {
  return fs::relative(fs::absolute(path), fs::absolute(base)).generic_string();
}

// An exponential moving average over about `window` steps (the first value seeds it).
std::vector<double> smooth(const std::vector<double>& y, double window) {
  std::vector<double> out(y.size());
  const double alpha = 2.0 / (std::max(1.0, window) + 1.0);
  double s = y.empty() ? 0 : y[0];
  for (size_t i = 0; i < y.size(); ++i) out[i] = s = alpha * y[i] + (1 - alpha) * s;
  return out;
}

// Per-index spread over the runs' vectors (truncated to the shortest).
std::vector<Spread> spread_by_index(const std::vector<std::vector<double>>& per_run) {
  size_t n = per_run.empty() ? 0 : per_run[0].size();
  for (const auto& v : per_run) n = std::min(n, v.size());
  std::vector<Spread> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<double> column;
    for (const auto& v : per_run) column.push_back(v[i]);
    out.push_back(spread_of(column));
  }
  return out;
}

Series series_from(const std::string& name, const std::vector<double>& x, const std::vector<Spread>& s, int color,
                   bool band) {
  Series out;
  out.name = name;
  out.color = color;
  for (size_t i = 0; i < s.size() && i < x.size(); ++i) {
    out.x.push_back(x[i]);
    out.y.push_back(s[i].mean);
    if (band) out.y_low.push_back(s[i].min), out.y_high.push_back(s[i].max);
  }
  return out;
}

std::string show(const Spread& s, int precision) {
  if (s.count == 0) return "n/a";
  if (s.count == 1) return fmt::format("{:.{}f}", s.mean, precision);
  return fmt::format("{:.{}f} ± {:.{}f}", s.mean, precision, s.sd, precision);
}

// The bits per byte at each evaluated length, by length.
std::map<int64_t, double> curve_of(const RunData& d) {
  std::map<int64_t, double> out;
  if (!d.eval.contains("bits_per_byte")) return out;
  for (const json& p : d.eval["bits_per_byte"]["points"])
    out[p.at("T").get<int64_t>()] = p.value("available", false) ? p.at("bits_per_byte").get<double>() : kNaN;
  return out;
}

// Passkey accuracy (exact match, or per digit) by (length, depth).
std::map<std::pair<int64_t, double>, double> passkey_of(const RunData& d, const char* key = "accuracy") {
  std::map<std::pair<int64_t, double>, double> out;
  if (!d.eval.contains("passkey")) return out;
  for (const json& c : d.eval["passkey"]["cells"])
    out[{c.at("length").get<int64_t>(), c.at("depth").get<double>()}] =
        c.value("available", false) ? c.at(key).get<double>() : kNaN;
  return out;
}

std::vector<double> runway_shares(const RunData& d) {
  std::vector<double> out;
  for (const json& l : d.inspect.at("cascade").at("layers")) out.push_back(l.at("runway_share").get<double>());
  return out;
}

void write_plot(const std::string& out_dir, const std::string& name, const std::string& svg) {
  write_text_file((fs::path(out_dir) / "plots" / name).string(), svg);
}

std::string figure_img(const std::string& src, const std::string& caption, const std::string& cls = "") {
  return fmt::format("<figure{}><a href=\"{}\"><img src=\"{}\" alt=\"{}\"></a><figcaption>{}</figcaption></figure>\n",
                     cls.empty() ? "" : " class=\"" + cls + "\"", escape_xml(src), escape_xml(src), escape_xml(caption),
                     escape_xml(caption));
}

}  // namespace

Spread spread_of(const std::vector<double>& values) {
  Spread s{0, 0, kNaN, kNaN, 0};
  for (double v : values)
    if (std::isfinite(v)) {
      s.mean += v;
      s.min = s.count == 0 ? v : std::min(s.min, v);
      s.max = s.count == 0 ? v : std::max(s.max, v);
      ++s.count;
    }
  if (s.count == 0) return {kNaN, kNaN, kNaN, kNaN, 0};
  s.mean /= static_cast<double>(s.count);
  double ss = 0;
  for (double v : values)
    if (std::isfinite(v)) ss += (v - s.mean) * (v - s.mean);
  s.sd = s.count > 1 ? std::sqrt(ss / static_cast<double>(s.count - 1)) : 0.0;
  return s;
}

namespace {

// ---- the data: runs grouped by label ----

std::vector<Group> group_by_label(const std::vector<RunData>& data) {
  std::vector<Group> groups;
  for (const RunData& d : data) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.label == d.run.label; });
    if (it == groups.end()) groups.push_back({d.run.label, {}}), it = groups.end() - 1;
    it->runs.push_back(&d);
  }
  return groups;
}

// ---- the charts (plots/*.svg) ----

// Training loss (smoothed) and validation loss of each group, in bits per byte.
std::string loss_chart(const std::vector<Group>& groups) {
  std::vector<Series> loss_series;
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::vector<double>> train, val;
    const RunData& first = *groups[g].runs[0];
    for (const RunData* d : groups[g].runs) {
      train.push_back(smooth(d->train_bits, static_cast<double>(d->steps.size()) / 40.0));
      val.push_back(d->val_bits);
    }
    // At most ~300 points per line: keep every k-th step (and the last).
    const size_t n = spread_by_index(train).size(), k = std::max<size_t>(1, n / 300);
    std::vector<double> xs;
    std::vector<std::vector<double>> thin(train.size());
    for (size_t i = 0; i < n; i += k) {
      xs.push_back(first.steps[i]);
      for (size_t r = 0; r < train.size(); ++r) thin[r].push_back(train[r][i]);
    }
    loss_series.push_back(series_from(groups[g].label + " train", xs, spread_by_index(thin), static_cast<int>(g),
                                      groups[g].runs.size() > 1));
    Series v = series_from(groups[g].label + " validation", first.val_steps, spread_by_index(val), static_cast<int>(g),
                           groups[g].runs.size() > 1);
    v.dashed = v.markers = true;
    loss_series.push_back(v);
  }
  ChartOptions options = chart_options("Loss during training", "optimizer step", "bits per byte");
  options.width = 720;
  return line_chart_svg(options, loss_series);
}

// Per group, the spread over its runs of the bits per byte at each of `lengths`.
std::vector<std::vector<Spread>> curve_spreads(const std::vector<Group>& groups, const std::vector<int64_t>& lengths) {
  std::vector<std::vector<Spread>> curve_spread(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::vector<double>> per_run;
    for (const RunData* d : groups[g].runs) {
      const auto curve = curve_of(*d);
      std::vector<double> ys;
      for (int64_t T : lengths) ys.push_back(curve.count(T) ? curve.at(T) : kNaN);
      per_run.push_back(ys);
    }
    curve_spread[g] = spread_by_index(per_run);
  }
  return curve_spread;
}

std::string extrapolation_chart(const std::vector<Group>& groups, const std::vector<int64_t>& lengths,
                                const std::vector<std::vector<Spread>>& curve_spread, int64_t L) {
  std::vector<Series> extrapolation;
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<double> xs(lengths.begin(), lengths.end());
    Series s = series_from(groups[g].label, xs, curve_spread[g], static_cast<int>(g), groups[g].runs.size() > 1);
    s.markers = true;
    extrapolation.push_back(s);
  }
  ChartOptions options = chart_options(fmt::format("Length extrapolation (trained at L = {})", L),
                                       "context length (bytes, log scale)", "bits per byte (validation)");
  options.log2_x = true;
  return line_chart_svg(options, extrapolation);
}

// Per group, the spread over its runs of each layer's runway share.
std::vector<std::vector<Spread>> share_spreads(const std::vector<Group>& groups) {
  std::vector<std::vector<Spread>> share_spread(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::vector<double>> per_run;
    for (const RunData* d : groups[g].runs) per_run.push_back(runway_shares(*d));
    share_spread[g] = spread_by_index(per_run);
  }
  return share_spread;
}

std::string cascade_chart(const std::vector<Group>& groups, const std::vector<std::vector<Spread>>& share_spread) {
  std::vector<Series> cascade_series;
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<double> xs;
    for (size_t l = 0; l < share_spread[g].size(); ++l) xs.push_back(static_cast<double>(l));
    Series s = series_from(groups[g].label, xs, share_spread[g], static_cast<int>(g), groups[g].runs.size() > 1);
    s.markers = true;
    cascade_series.push_back(s);
  }
  ChartOptions options =
      chart_options("Runway share of long-range influence, per layer", "layer", "runway share (pairs i - j >= 2)");
  options.y_min = 0;
  options.y_max = 1;
  options.integer_x = true;
  return line_chart_svg(options, cascade_series);
}

// ---- the results: one row per group ----

// What the report measures, for every group the same: the lengths of the extrapolation
// curve (L = the training length) and of the passkey grid, and per group the spreads.
struct Measures {
  std::vector<int64_t> lengths, passkey_lengths;
  int64_t L = 0;
  std::vector<std::vector<Spread>> curve_spread, share_spread;  // [group][length], [group][layer]
};

// One group's numbers: one value per run of each.
struct GroupNumbers {
  std::vector<double> params, steps, seconds, final_val, recall, last_share;
  std::map<int64_t, std::vector<double>> passkey_mean;  // by length: mean accuracy over depths, per run
};

GroupNumbers numbers_of(const Group& grp, const std::vector<int64_t>& passkey_lengths) {
  GroupNumbers n;
  for (const RunData* d : grp.runs) {
    n.params.push_back(d->params);
    n.steps.push_back(d->steps.back());
    n.seconds.push_back(d->run.train_seconds);
    n.final_val.push_back(d->val_bits.empty() ? kNaN : d->val_bits.back());
    n.recall.push_back(d->eval.contains("recall") ? number_or_nan(d->eval["recall"], "accuracy") : kNaN);
    const std::vector<double> shares = runway_shares(*d);
    n.last_share.push_back(shares.empty() ? kNaN : shares.back());
    const auto pk = passkey_of(*d);
    for (int64_t T : passkey_lengths) {
      std::vector<double> accs;
      for (const auto& [key, acc] : pk)
        if (key.first == T) accs.push_back(acc);
      n.passkey_mean[T].push_back(spread_of(accs).mean);
    }
  }
  return n;
}

struct Column {
  std::string name;
  std::vector<std::string> cells;  // one per group
};

std::vector<Column> table_columns(const Measures& m) {
  std::vector<Column> columns = {{"config", {}}, {"attention", {}}, {"seeds", {}}, {"parameters", {}},
                                 {"steps", {}},  {"train s", {}},   {"val bpb", {}}};
  for (int64_t T : m.lengths)
    columns.push_back({T == m.L ? "bpb@L" : fmt::format("bpb@{}L", T / std::max<int64_t>(m.L, 1)), {}});
  for (int64_t T : m.passkey_lengths) columns.push_back({fmt::format("passkey@{}", T), {}});
  columns.push_back({"recall", {}});
  columns.push_back({"runway share (last layer)", {}});
  return columns;
}

// Appends group g's cells, in the order of table_columns.
void add_table_row(std::vector<Column>& columns, const Group& grp, size_t g, const GroupNumbers& n,
                   const Measures& m) {
  size_t c = 0;
  columns[c++].cells.push_back(grp.label);
  columns[c++].cells.push_back(grp.runs[0]->config.value("attention", std::string("?")) +
                               (grp.runs[0]->config.value("attention", std::string()) == "rewired"
                                    ? " (" + grp.runs[0]->config.value("runway_summary", std::string()) + ")"
                                    : ""));
  columns[c++].cells.push_back(std::to_string(grp.runs.size()));
  columns[c++].cells.push_back(show(spread_of(n.params), 0));
  columns[c++].cells.push_back(show(spread_of(n.steps), 0));
  columns[c++].cells.push_back(show(spread_of(n.seconds), 1));
  columns[c++].cells.push_back(show(spread_of(n.final_val), 3));
  for (size_t i = 0; i < m.lengths.size(); ++i) columns[c++].cells.push_back(show(m.curve_spread[g][i], 3));
  for (int64_t T : m.passkey_lengths) columns[c++].cells.push_back(show(spread_of(n.passkey_mean.at(T)), 2));
  columns[c++].cells.push_back(show(spread_of(n.recall), 3));
  columns[c++].cells.push_back(show(spread_of(n.last_share), 3));
}

// Group g's entry of results.json.
json group_results(const Group& grp, size_t g, const GroupNumbers& n, const Measures& m, const std::string& out_dir) {
  json r{{"label", grp.label},
         {"seeds", grp.runs.size()},
         {"config", grp.runs[0]->config},
         {"parameters", spread_of(n.params).mean},
         {"final_val_bits_per_byte", {{"mean", spread_of(n.final_val).mean}, {"sd", spread_of(n.final_val).sd}}},
         {"recall_accuracy", {{"mean", spread_of(n.recall).mean}, {"sd", spread_of(n.recall).sd}}}};
  json curve = json::array();
  for (size_t i = 0; i < m.lengths.size(); ++i)
    curve.push_back({{"T", m.lengths[i]}, {"mean", m.curve_spread[g][i].mean}, {"sd", m.curve_spread[g][i].sd}});
  r["bits_per_byte"] = curve;
  json shares = json::array();
  for (const Spread& s : m.share_spread[g]) shares.push_back({{"mean", s.mean}, {"sd", s.sd}});
  r["runway_share_by_layer"] = shares;
  json pk = json::object(), pk_spread = json::object();  // the means alone, and with the sd over seeds
  for (int64_t T : m.passkey_lengths) {
    const Spread s = spread_of(n.passkey_mean.at(T));
    pk[std::to_string(T)] = s.mean;
    pk_spread[std::to_string(T)] = {{"mean", s.mean}, {"sd", s.sd}};
  }
  r["passkey_mean_accuracy_by_length"] = pk;
  r["passkey_accuracy_by_length"] = pk_spread;
  json seeds = json::array();
  for (const RunData* d : grp.runs)
    seeds.push_back({{"seed", d->run.seed}, {"dir", relative(d->run.dir, out_dir)}, {"train_seconds", d->run.train_seconds}});
  r["runs"] = seeds;
  return r;
}

// The table as plain text for the terminal: columns padded to their widest cell.
std::string text_table(const std::vector<Column>& columns, size_t rows) {
  std::vector<size_t> width;
  for (const Column& col : columns) {
    size_t w = col.name.size();
    for (const std::string& s : col.cells) w = std::max(w, fmt::format("{}", s).size());
    width.push_back(w);
  }
  std::string text;
  for (size_t c = 0; c < columns.size(); ++c) text += fmt::format("{:<{}}  ", columns[c].name, width[c]);
  text += "\n";
  for (size_t g = 0; g < rows; ++g) {
    for (size_t c = 0; c < columns.size(); ++c) text += fmt::format("{:<{}}  ", columns[c].cells[g], width[c]);
    text += "\n";
  }
  return text;
}

// ---- paired differences to the baseline (the first configuration) ----

// One value per seed of each measure the paired table compares (lower bpb is better,
// higher passkey and recall are better).
struct SeedMeasures {
  std::vector<std::string> names;
  std::vector<std::map<uint64_t, double>> values;  // [measure][seed]
};

SeedMeasures seed_measures(const Group& grp, const Measures& m) {
  SeedMeasures out;
  auto add = [&](const std::string& name) {
    out.names.push_back(name);
    out.values.emplace_back();
    return out.values.size() - 1;
  };
  const size_t val = add("val bpb");
  std::vector<size_t> curve, passkey;
  for (int64_t T : m.lengths) curve.push_back(add(T == m.L ? "bpb@L" : fmt::format("bpb@{}L", T / std::max<int64_t>(m.L, 1))));
  for (int64_t T : m.passkey_lengths) passkey.push_back(add(fmt::format("passkey@{}", T)));
  const size_t recall = add("recall");
  for (const RunData* d : grp.runs) {
    const uint64_t seed = d->run.seed;
    out.values[val][seed] = d->val_bits.empty() ? kNaN : d->val_bits.back();
    const auto c = curve_of(*d);
    for (size_t i = 0; i < m.lengths.size(); ++i) {
      const auto it = c.find(m.lengths[i]);
      out.values[curve[i]][seed] = it == c.end() ? kNaN : it->second;
    }
    const auto pk = passkey_of(*d);
    for (size_t i = 0; i < m.passkey_lengths.size(); ++i) {
      std::vector<double> accs;
      for (const auto& [key, acc] : pk)
        if (key.first == m.passkey_lengths[i]) accs.push_back(acc);
      out.values[passkey[i]][seed] = spread_of(accs).mean;
    }
    out.values[recall][seed] = d->eval.contains("recall") ? number_or_nan(d->eval["recall"], "accuracy") : kNaN;
  }
  return out;
}

// "-0.012 [-0.020, -0.004] *" (the star: the interval excludes 0), "n/a" without pairs,
// the mean alone for one pair.
std::string show_paired(const PairedDifference& p) {
  if (p.n == 0) return "n/a";
  if (p.n == 1) return fmt::format("{:+.3f} (1 seed)", p.mean);
  return fmt::format("{:+.3f} [{:+.3f}, {:+.3f}]{}", p.mean, p.low, p.high, p.excludes_zero() ? " *" : "");
}

// Every other group against groups[0], measure by measure: the columns of the paired
// table (config, then one per measure) and the entries of results.json.
std::vector<Column> paired_columns(const std::vector<Group>& groups, const Measures& m, json* results) {
  const SeedMeasures base = seed_measures(groups[0], m);
  std::vector<Column> columns{{"config", {}}};
  for (const std::string& name : base.names) columns.push_back({name, {}});
  *results = json::array();
  for (size_t g = 1; g < groups.size(); ++g) {
    const SeedMeasures other = seed_measures(groups[g], m);
    columns[0].cells.push_back(groups[g].label);
    json measures = json::array();
    for (size_t i = 0; i < base.names.size(); ++i) {
      const PairedDifference p = paired_difference(base.values[i], other.values[i]);
      columns[i + 1].cells.push_back(show_paired(p));
      measures.push_back({{"measure", base.names[i]}, {"n", p.n}, {"mean", p.mean}, {"sd", p.sd}, {"low", p.low},
                          {"high", p.high}, {"excludes_zero", p.excludes_zero()}});
    }
    results->push_back({{"label", groups[g].label}, {"baseline", groups[0].label}, {"measures", measures}});
  }
  return columns;
}

// ---- the sections of report.html ----

std::string title_section(const ReportOptions& options) {
  std::string html = fmt::format("<h1>{}</h1>\n", escape_xml(options.title));
  if (!options.subtitle.empty()) html += fmt::format("<p class=\"note\">{}</p>\n", escape_xml(options.subtitle));
  return html;
}

std::string results_section(const std::vector<Column>& columns, size_t rows, const std::string& spread_note) {
  std::string html = "<h2>Results</h2>\n<table><tr>";
  for (const Column& col : columns) html += "<th>" + escape_xml(col.name) + "</th>";
  html += "</tr>\n";
  for (size_t g = 0; g < rows; ++g) {
    html += "<tr>";
    for (size_t c = 0; c < columns.size(); ++c)
      html += fmt::format("<td{}>{}</td>", c < 2 ? " class=\"name\"" : "", escape_xml(columns[c].cells[g]));
    html += "</tr>\n";
  }
  html += "</table>\n<p class=\"note\">" + escape_xml(spread_note) +
          " bpb = bits per byte on the validation split (lower is better); bpb@kL at k times the training "
          "length L; passkey@N = exact-match accuracy of the 5-digit key in N-byte documents, mean over needle "
          "depths; recall = associative-recall accuracy (teacher forced); runway share: see the cascade "
          "section. All numbers are in results.json.</p>\n";
  return html;
}

std::string paired_section(const std::vector<Column>& columns, size_t rows, const std::string& baseline) {
  std::string html = fmt::format("<h2>Paired differences to {}</h2>\n<table><tr>", escape_xml(baseline));
  for (const Column& col : columns) html += "<th>" + escape_xml(col.name) + "</th>";
  html += "</tr>\n";
  for (size_t g = 0; g < rows; ++g) {
    html += "<tr>";
    for (size_t c = 0; c < columns.size(); ++c)
      html += fmt::format("<td{}>{}</td>", c == 0 ? " class=\"name\"" : "", escape_xml(columns[c].cells[g]));
    html += "</tr>\n";
  }
  html += fmt::format(
      "</table>\n<p class=\"note\">Each cell: the mean over seeds of (configuration - {0}), the two runs of a seed "
      "sharing initialisation and data order, with its 95% Student t interval; * marks an interval that excludes 0, "
      "a difference larger than the seed-to-seed noise of this study. Lower bpb is better; higher passkey and recall "
      "are better. One seed cannot separate effects of this size: use `runway compare --seeds 1,2,3` or more.</p>\n",
      escape_xml(baseline));
  return html;
}

std::string curves_sections() {
  std::string html = "<h2>Training</h2>\n<div class=\"row\">" + figure_img("plots/loss.svg",
          "Training loss (exponential moving average over ~1/40 of the run) and validation loss, in bits per byte.") +
          "</div>\n";
  html += "<h2>Length extrapolation</h2>\n<div class=\"row\">" + figure_img("plots/extrapolation.svg",
          "Bits per byte on held-out text at 1, 2, 4 and 8 times the training length (RoPE beyond its training range).") +
          "</div>\n";
  return html;
}

// One group's passkey grid: a table by length and depth, cells coloured by accuracy.
std::string passkey_table(const Group& grp, const std::vector<int64_t>& passkey_lengths) {
  std::map<std::pair<int64_t, double>, std::vector<double>> cells, digit_cells;
  std::vector<double> depths;
  for (const RunData* d : grp.runs) {
    for (const auto& [key, acc] : passkey_of(*d)) {
      cells[key].push_back(acc);
      if (std::find(depths.begin(), depths.end(), key.second) == depths.end()) depths.push_back(key.second);
    }
    for (const auto& [key, acc] : passkey_of(*d, "digit_accuracy")) digit_cells[key].push_back(acc);
  }
  std::sort(depths.begin(), depths.end());
  std::string html = "<table><tr><th colspan=\"" + std::to_string(depths.size() + 1) + "\">" + escape_xml(grp.label) +
                     "</th></tr><tr><th>length \\ depth</th>";
  for (double dp : depths) html += fmt::format("<th>{:.0f}%</th>", dp * 100);
  html += "</tr>\n";
  for (int64_t T : passkey_lengths) {
    html += fmt::format("<tr><th>{}</th>", T);
    for (double dp : depths) {
      const Spread s = spread_of(cells[{T, dp}]);
      if (s.count == 0) {
        html += "<td>n/a</td>";
        continue;
      }
      const Rgb bg = sequential_color(s.mean);
      html += fmt::format("<td style=\"background:{};color:{}\">{:.2f}<br><small>digits {:.2f}</small></td>", hex(bg),
                          s.mean > 0.6 ? "#000" : "#fff", s.mean, spread_of(digit_cells[{T, dp}]).mean);
    }
    html += "</tr>\n";
  }
  html += "</table>\n";
  return html;
}

std::string passkey_section(const std::vector<Group>& groups, const std::vector<int64_t>& passkey_lengths) {
  std::string html = "<h2>Passkey retrieval</h2>\n<div class=\"row\">\n";
  if (passkey_lengths.empty())
    html += "<p class=\"note\">Passkey retrieval was not evaluated (no trials, or no length of at least the "
            "passkey minimum).</p>\n";
  else
    for (const Group& grp : groups) html += passkey_table(grp, passkey_lengths);
  html += "</div>\n<p class=\"note\">Exact-match accuracy of the 5 greedily decoded key digits (the colour), and "
          "below it the fraction of single digits right (chance: 0.1), by document length (bytes) and needle depth "
          "(0% = start of the document).</p>\n";
  return html;
}

std::string cascade_section(const std::vector<Group>& groups, const std::string& out_dir) {
  std::string html =
      "<h2>Runway cascade</h2>\n<p class=\"note\">For each layer, how much of token j's influence on token i "
      "(pairs at distance &ge; 2) arrives through the runway, the tokens between them, rather than by i "
      "attending to j directly; from attention rollout over the inspected sample (docs/cascade.md). "
      "Layer 0 is 0 by construction.</p>\n<div class=\"row\">" +
      figure_img("plots/cascade.svg", "Runway share per layer (mean over seeds).");
  for (const Group& grp : groups)
    html += figure_img(relative((fs::path(grp.runs[0]->run.inspect_dir) / "cascade.svg").string(), out_dir),
                       grp.label + ": runway share by distance i - j, per layer (seed " +
                           std::to_string(grp.runs[0]->run.seed) + ")");
  html += "</div>\n";
  return html;
}

// Heatmaps: the last layer's runway head of each configuration's first seed.
std::string attention_maps_section(const std::vector<Group>& groups, const std::string& out_dir) {
  std::string html =
      "<h2>Attention maps</h2>\n<p class=\"note\">The last layer's runway head on the inspected sample: A "
      "(softmax of the logits), R (runway coefficients; for a standard model what the runway head would measure, "
      "not applied), A' (the rewired attention actually used) and A' - A. Every layer and head is on each run's "
      "inspect page.</p>\n";
  for (const Group& grp : groups) {
    const RunData& d = *grp.runs[0];
    const std::string idir = relative(d.run.inspect_dir, out_dir);
    const int64_t last = static_cast<int64_t>(d.inspect.at("layers").size()) - 1;
    const int64_t head = d.inspect.value("runway_head", int64_t{0});
    const bool rewired = d.inspect.at("layers").back().value("rewired", false);
    html += fmt::format("<h3>{} (seed {}): <a href=\"{}/index.html\">all layers and heads</a></h3>\n<div class=\"row\">\n",
                        escape_xml(grp.label), d.run.seed, escape_xml(idir));
    const std::string stem = fmt::format("{}/L{}", idir, last);
    const std::string head_stem = fmt::format("{}_H{}", stem, head);
    html += figure_img(head_stem + "_A.png", fmt::format("A, layer {} head {}", last, head), "heat");
    html += figure_img(stem + "_R.png", fmt::format("R, layer {}", last), "heat");
    if (rewired) {
      html += figure_img(head_stem + "_Arew.png", fmt::format("A', layer {} head {}", last, head), "heat");
      html += figure_img(head_stem + "_diff.png", fmt::format("A' - A, layer {} head {}", last, head), "heat");
    }
    html += "</div>\n";
  }
  return html;
}

std::string configurations_section(const std::vector<Group>& groups) {
  std::string html = "<h2>Configurations</h2>\n";
  for (const Group& grp : groups)
    html += fmt::format("<details><summary>{}</summary><pre class=\"text\">{}</pre></details>\n", escape_xml(grp.label),
                        escape_xml(grp.runs[0]->config.dump(2)));
  return html;
}

}  // namespace

std::string write_report(const std::string& out_dir, const std::vector<ReportRun>& runs, const ReportOptions& options) {
  if (runs.empty()) throw Error("report: no runs to report");
  std::vector<RunData> data;
  for (const ReportRun& r : runs) data.push_back(load_run(r));
  const std::vector<Group> groups = group_by_label(data);
  std::error_code ec;
  fs::create_directories(fs::path(out_dir) / "plots", ec);
  if (ec) throw Error(fmt::format("report: cannot create '{}/plots': {}", out_dir, ec.message()));

  // The lengths come from the first run: every run of a study is evaluated alike.
  Measures m;
  for (const auto& [T, bpb] : curve_of(data[0])) m.lengths.push_back(T);
  for (const auto& [key, acc] : passkey_of(data[0]))
    if (m.passkey_lengths.empty() || m.passkey_lengths.back() != key.first) m.passkey_lengths.push_back(key.first);
  m.L = data[0].config.value("seq_len", int64_t{0});
  m.curve_spread = curve_spreads(groups, m.lengths);
  m.share_spread = share_spreads(groups);
  write_plot(out_dir, "loss.svg", loss_chart(groups));
  write_plot(out_dir, "extrapolation.svg", extrapolation_chart(groups, m.lengths, m.curve_spread, m.L));
  write_plot(out_dir, "cascade.svg", cascade_chart(groups, m.share_spread));

  std::vector<Column> columns = table_columns(m);
  json results = json::array();
  for (size_t g = 0; g < groups.size(); ++g) {
    const GroupNumbers n = numbers_of(groups[g], m.passkey_lengths);
    add_table_row(columns, groups[g], g, n, m);
    results.push_back(group_results(groups[g], g, n, m, out_dir));
  }
  json paired;
  const std::vector<Column> paired_cols = paired_columns(groups, m, &paired);
  // JSON has no NaN: nlohmann writes null for it, which is what a missing value should be.
  write_text_file((fs::path(out_dir) / "results.json").string(),
                  json{{"configs", results}, {"paired_differences", paired}}.dump(2) + "\n");

  const bool several_seeds =
      std::any_of(groups.begin(), groups.end(), [](const Group& g) { return g.runs.size() > 1; });
  const std::string spread_note =
      several_seeds ? "Values are means over seeds ± their sample standard deviation; shaded bands span min..max."
                    : "One seed per configuration: differences of the size seen here can be seed-to-seed noise. "
                      "The study in docs/results.md (runway compare --config-set studies/paper-claims.json) runs "
                      "3 seeds per configuration with paired 95% intervals.";
  std::string page = html_page_start(options.title);
  page += title_section(options);
  page += results_section(columns, groups.size(), spread_note);
  if (groups.size() > 1) page += paired_section(paired_cols, groups.size() - 1, groups[0].label);
  page += curves_sections();
  page += passkey_section(groups, m.passkey_lengths);
  page += cascade_section(groups, out_dir);
  page += attention_maps_section(groups, out_dir);
  page += configurations_section(groups);
  page += html_page_end();
  write_text_file((fs::path(out_dir) / "report.html").string(), page);
  std::string text = text_table(columns, groups.size());
  if (groups.size() > 1)
    text += fmt::format("\npaired differences to {} (mean over seeds [95% t interval], * = excludes 0):\n{}",
                        groups[0].label, text_table(paired_cols, groups.size() - 1));
  return text;
}

}  // namespace runway::viz
