#include "viz/inspect.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/file_io.h"
#include "engine/npy.h"
#include "viz/chart.h"
#include "viz/heatmap.h"
#include "viz/html.h"

namespace runway::viz {

namespace fs = std::filesystem;

namespace {

// Longer texts make (H, T, T) maps too large to look at and to keep in memory per layer.
constexpr int64_t kMaxInspectLength = 2048;

// The (T, T) block of batch row 0 and head h of a (1, H, T, T) or (1, T, T) map.
std::vector<double> head_block(const std::vector<double>& all, int64_t h, int64_t T) {
  const auto begin = all.begin() + h * T * T;
  return std::vector<double>(begin, begin + T * T);
}

struct MapWriter {
  std::string dir;
  bool npy;  // also write .npy arrays
  std::vector<std::string> labels;
  int64_t T;
  nlohmann::json files = nlohmann::json::array();

  // Writes NAME.png (and NAME.npy) and returns the PNG's file name.
  std::string write(const std::string& name, const std::vector<double>& m, const std::string& title, bool signed_values) {
    HeatmapOptions o;
    o.title = title;
    o.labels = labels;
    o.signed_values = signed_values;
    if (!signed_values) o.vmin = 0;  // probabilities and R are >= 0: keep 0 at the bottom of the scale
    render_heatmap(m, T, T, o).write_png((fs::path(dir) / (name + ".png")).string());
    files.push_back(name + ".png");
    if (npy) {
      runway::write_npy((fs::path(dir) / (name + ".npy")).string(), Tensor::from_vector(m, {T, T}, DType::Float32));
      files.push_back(name + ".npy");
    }
    return name + ".png";
  }
};

std::string figure(const std::string& png, const std::string& caption) {
  return fmt::format("<figure class=\"map\"><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>\n",
                     escape_xml(png), escape_xml(caption));
}

}  // namespace

void write_text_file(const std::string& path, const std::string& text) {
  write_file_atomic(path, "write_text_file", [&](const ByteSink& sink) { sink(text.data(), text.size()); });
}

std::vector<double> runway_coefficients_from(const std::vector<double>& p, int64_t T, RunwaySummary summary) {
  if (T < 1 || static_cast<int64_t>(p.size()) != T * T)
    throw Error(fmt::format("runway_coefficients_from: {} values for a ({}, {}) matrix", p.size(), T, T));
  std::vector<double> r(static_cast<size_t>(T * T), 0.0);
  auto P = [&](int64_t i, int64_t j) { return p[static_cast<size_t>(i * T + j)]; };
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j + 1 < i; ++j) {
      double sum = 0;
      for (int64_t k = j + 1; k < i; ++k) sum += summary == RunwaySummary::Absorption ? P(k, j) : P(i, k) * P(k, j);
      r[static_cast<size_t>(i * T + j)] = sum;
    }
  return r;
}

std::string cascade_chart_svg(const nn::CascadeReport& report, const std::string& title) {
  std::vector<Series> series;
  for (size_t l = 0; l < report.layers.size(); ++l) {
    const nn::CascadeLayer& c = report.layers[l];
    Series s;
    s.name = fmt::format("layer {} ({:.2f})", l, c.runway_share);
    s.color = static_cast<int>(l);
    for (size_t d = 2; d < c.direct_by_distance.size(); ++d) {
      const double total = c.direct_by_distance[d] + c.runway_by_distance[d];
      s.x.push_back(static_cast<double>(d));
      s.y.push_back(total > 0 ? c.runway_by_distance[d] / total : 0.0 / 0.0);
    }
    series.push_back(std::move(s));
  }
  ChartOptions o = chart_options(title, "distance i - j (tokens)", "runway share of j's influence on i");
  o.y_min = 0, o.y_max = 1;
  return line_chart_svg(o, series);
}

InspectResult inspect_model(const nn::GPT& model, const std::vector<uint8_t>& bytes, const std::string& out_dir,
                            const InspectOptions& options) {
  const nn::GPTConfig& cfg = model.config;
  const int64_t T = static_cast<int64_t>(bytes.size());
  const int64_t limit = cfg.pos == nn::PositionEncoding::Learned ? cfg.seq_len : kMaxInspectLength;
  if (T < 1) throw Error("inspect: the text is empty");
  if (T > limit)
    throw Error(fmt::format("inspect: the text is {} bytes, this model can inspect at most {} ({})", T, limit,
                            cfg.pos == nn::PositionEncoding::Learned ? "learned positions: the training length"
                                                                     : "the maps are T x T per head"));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir))
    throw Error(fmt::format("inspect: cannot create the output folder '{}': {}", out_dir, ec.message()));

  std::vector<nn::AttentionTrace> traces;
  {
    NoGradGuard no_grad;
    std::vector<int64_t> ids(bytes.begin(), bytes.end());
    model.forward(Tensor::from_indices(ids, {1, T}).to(model.wte.device()), &traces);
  }

  MapWriter maps{out_dir, options.write_npy, {}, T};
  std::vector<std::string> tokens;
  for (uint8_t b : bytes) maps.labels.push_back(byte_label(b));
  const int64_t H = cfg.n_head, r_head = cfg.runway.runway_head;
  const std::string summary_name = runway_summary_name(cfg.runway.summary);

  std::vector<std::vector<double>> used_attention;  // per layer, mean over heads: the cascade's input
  nlohmann::json layers = nlohmann::json::array();
  std::string body;
  for (size_t l = 0; l < traces.size(); ++l) {
    const RewiredIntermediates& m = traces[l].maps;
    const bool rewired = cfg.rewired && cfg.layer_is_rewired(static_cast<int64_t>(l));
    const std::vector<double> a = m.a.to_vector();
    const std::vector<double> a_rew = rewired ? m.a_rewired.to_vector() : a;
    const std::vector<double> p = rewired ? head_block(m.p.to_vector(), 0, T) : head_block(a, r_head, T);
    const std::vector<double> r =
        rewired ? head_block(m.r.to_vector(), 0, T) : runway_coefficients_from(p, T, cfg.runway.summary);
    used_attention.push_back(nn::mean_over_heads(a_rew, H, T, 0));  // a_rew is A in a standard layer

    const std::string L = fmt::format("L{}", l);
    body += fmt::format("<section id=\"layer{0}\"><h2>Layer {0}: {1}</h2>\n", l,
                        rewired ? fmt::format("rewired ({}, beta {}, runway head {})", summary_name, cfg.runway.beta,
                                              r_head)
                                : "standard attention");
    body += "<div class=\"row\">\n";
    body += figure(maps.write(L + "_P", p, fmt::format("layer {} P (runway head {})", l, r_head), false),
                   fmt::format("P: the runway head's attention probabilities (head {})", r_head));
    body += figure(maps.write(L + "_R", r, fmt::format("layer {} R ({})", l, summary_name), false),
                   rewired ? fmt::format("R: runway coefficients ({}); every head's logits get -beta R", summary_name)
                           : fmt::format("R ({}): what the runway head would measure; not applied in a standard layer",
                                         summary_name));
    body += "</div>\n";
    for (int64_t h = 0; h < H; ++h) {
      const std::string LH = fmt::format("L{}_H{}", l, h);
      const std::vector<double> ah = head_block(a, h, T);
      body += fmt::format("<h3>head {}{}</h3><div class=\"row\">\n", h, h == r_head ? " (the runway head)" : "");
      body += figure(maps.write(LH + "_A", ah, fmt::format("layer {} head {} A", l, h), false),
                     "A = softmax(S): un-rewired attention");
      if (rewired) {
        const std::vector<double> arh = head_block(a_rew, h, T);
        std::vector<double> diff(arh.size());
        for (size_t i = 0; i < diff.size(); ++i) diff[i] = arh[i] - ah[i];
        body += figure(maps.write(LH + "_Arew", arh, fmt::format("layer {} head {} A'", l, h), false),
                       "A' = softmax(S - beta R): the attention used");
        body += figure(maps.write(LH + "_diff", diff, fmt::format("layer {} head {} A' - A", l, h), true),
                       "A' - A: red gained, blue lost");
      }
      body += "</div>\n";
    }
    body += "</section>\n";
    layers.push_back({{"layer", l}, {"rewired", rewired}});
  }

  InspectResult result;
  result.cascade = nn::runway_cascade(used_attention, T);
  const std::string chart = cascade_chart_svg(
      result.cascade, fmt::format("Runway cascade: {} model", cfg.rewired ? "rewired" : "standard"));
  write_text_file((fs::path(out_dir) / "cascade.svg").string(), chart);
  write_text_file((fs::path(out_dir) / "cascade.json").string(), nn::to_json(result.cascade).dump(1) + "\n");
  maps.files.push_back("cascade.svg");
  maps.files.push_back("cascade.json");

  std::string text(bytes.begin(), bytes.end());
  result.summary = {{"title", options.title},
                    {"text", printable_excerpt(text, static_cast<size_t>(T) + 8)},
                    {"length", T},
                    {"tokens", maps.labels},
                    {"attention", cfg.rewired ? "rewired" : "standard"},
                    {"n_layer", cfg.n_layer},
                    {"n_head", cfg.n_head},
                    {"n_embd", cfg.n_embd},
                    {"runway_head", r_head},
                    {"runway_summary", summary_name},
                    {"runway_beta", cfg.runway.beta},
                    {"layers", layers},
                    {"cascade", nn::to_json(result.cascade)},
                    {"files", maps.files}};
  write_text_file((fs::path(out_dir) / "inspect.json").string(), result.summary.dump(1) + "\n");

  if (options.write_html) {
    std::string shares;
    for (size_t l = 0; l < result.cascade.layers.size(); ++l)
      shares += fmt::format("<tr><td>{}</td><td>{:.3f}</td><td>{:.4g}</td><td>{:.4g}</td></tr>\n", l,
                            result.cascade.layers[l].runway_share, result.cascade.layers[l].direct_total,
                            result.cascade.layers[l].runway_total);
    std::string page = html_page_start(fmt::format("runway inspect: {}", options.title.empty() ? "model" : options.title));
    page += fmt::format("<h1>runway inspect{}</h1>\n",
                        options.title.empty() ? "" : ": " + escape_xml(options.title));
    page += fmt::format(
        "<p>{} model: {} layers, {} heads, width {}. Text ({} bytes; axis labels: space = _, newline = /):</p>"
        "<pre class=\"text\">{}</pre>\n",
        cfg.rewired ? "Rewired" : "Standard", cfg.n_layer, cfg.n_head, cfg.n_embd, T, escape_xml(printable_excerpt(text, 4096)));
    page += "<h2>Runway cascade</h2>\n<p>How much of token j's influence on token i arrives through the runway "
            "(tokens between j and i) rather than directly, by attention rollout (docs/cascade.md). "
            "One number per layer: the runway share over pairs at distance &ge; 2.</p>\n";
    page += "<div class=\"row\"><figure><img src=\"cascade.svg\" alt=\"runway share by distance\"></figure>\n";
    page += "<table><tr><th>layer</th><th>runway share</th><th>direct sum</th><th>runway sum</th></tr>\n" + shares +
            "</table></div>\n";
    page += body;
    page += html_page_end();
    write_text_file((fs::path(out_dir) / "index.html").string(), page);
  }
  return result;
}

}  // namespace runway::viz
