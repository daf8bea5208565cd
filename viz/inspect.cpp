#include "viz/inspect.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "engine/file_io.h"
#include "engine/npy.h"
#include "viz/chart.h"
#include "viz/heatmap.h"
#include "viz/html.h"

namespace runway::viz {

namespace fs = std::filesystem;

namespace {

// The (T, T) block of head h of an (H, T, T) map.
std::vector<double> head_block(const std::vector<double>& all, int64_t h, int64_t T) {
  const auto begin = all.begin() + h * T * T;
  return std::vector<double>(begin, begin + T * T);
}

std::string figure(const std::string& png, const std::string& caption) {
  return fmt::format("<figure class=\"map\"><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>\n",
                     escape_xml(png), escape_xml(caption));
}

std::string model_kind(const nn::GPTConfig& model) { return model.rewired ? "rewired" : "standard"; }

// ---- the sections of index.html ----

// The title, the model and the text.
std::string header_section(const nn::GPTConfig& model, const std::string& title, const std::string& text,
                           int64_t T) {
  std::string html = fmt::format("<h1>runway inspect{}</h1>\n", title.empty() ? "" : ": " + escape_xml(title));
  html += fmt::format(
      "<p>{} model: {} layers, {} heads, width {}. Text ({} bytes; axis labels: space = _, newline = /):</p>"
      "<pre class=\"text\">{}</pre>\n",
      model.rewired ? "Rewired" : "Standard", model.n_layer, model.n_head, model.n_embd, T,
      escape_xml(printable_excerpt(text, 4096)));
  return html;
}

// The cascade chart and the table of each layer's runway share.
std::string cascade_section(const nn::CascadeReport& cascade) {
  std::string shares;
  for (size_t l = 0; l < cascade.layers.size(); ++l)
    shares += fmt::format("<tr><td>{}</td><td>{:.3f}</td><td>{:.4g}</td><td>{:.4g}</td></tr>\n", l,
                          cascade.layers[l].runway_share, cascade.layers[l].direct_total,
                          cascade.layers[l].runway_total);
  std::string html =
      "<h2>Runway cascade</h2>\n<p>How much of token j's influence on token i arrives through the runway "
      "(tokens between j and i) rather than directly, by attention rollout (docs/cascade.md). "
      "One number per layer: the runway share over pairs at distance &ge; 2.</p>\n";
  html += "<div class=\"row\"><figure><img src=\"cascade.svg\" alt=\"runway share by distance\"></figure>\n";
  html += "<table><tr><th>layer</th><th>runway share</th><th>direct sum</th><th>runway sum</th></tr>\n" + shares +
          "</table></div>\n";
  return html;
}

}  // namespace

InspectFolder::InspectFolder(const std::string& out_dir, const nn::GPTConfig& model, const std::vector<uint8_t>& bytes,
                             const InspectOptions& options)
    : out_dir_(out_dir), model_(model), bytes_(bytes), options_(options), T_(static_cast<int64_t>(bytes.size())) {
  for (uint8_t b : bytes) labels_.push_back(byte_label(b));
}

// Writes NAME.png (and NAME.npy) and returns the PNG's file name.
std::string InspectFolder::write_map(const std::string& name, const std::vector<double>& m, const std::string& title,
                                     bool signed_values) {
  HeatmapOptions o;
  o.title = title;
  o.labels = labels_;
  o.signed_values = signed_values;
  if (!signed_values) o.vmin = 0;  // probabilities and R are >= 0: keep 0 at the bottom of the scale
  render_heatmap(m, T_, T_, o).write_png((fs::path(out_dir_) / (name + ".png")).string());
  files_.push_back(name + ".png");
  if (options_.write_npy) {
    runway::write_npy((fs::path(out_dir_) / (name + ".npy")).string(), Tensor::from_vector(m, {T_, T_}, DType::Float32));
    files_.push_back(name + ".npy");
  }
  return name + ".png";
}

// The layer's section: the runway head's P and R, then each head's A (and A', A' - A).
void InspectFolder::add_layer(int64_t l, const LayerMaps& maps) {
  const int64_t H = model_.n_head, r_head = model_.runway.runway_head, T = T_;
  const std::string summary_name = runway_summary_name(model_.runway.summary);
  const std::string L = fmt::format("L{}", l);
  std::string html = fmt::format("<section id=\"layer{0}\"><h2>Layer {0}: {1}</h2>\n", l,
                                 maps.rewired ? fmt::format("rewired ({}, beta {}, runway head {})", summary_name,
                                                            model_.runway.beta, r_head)
                                              : "standard attention");
  html += "<div class=\"row\">\n";
  html += figure(write_map(L + "_P", maps.p, fmt::format("layer {} P (runway head {})", l, r_head), false),
                 fmt::format("P: the runway head's attention probabilities (head {})", r_head));
  html += figure(write_map(L + "_R", maps.r, fmt::format("layer {} R ({})", l, summary_name), false),
                 maps.rewired ? fmt::format("R: runway coefficients ({}); every head's logits get -beta R", summary_name)
                              : fmt::format("R ({}): what the runway head would measure; not applied in a standard layer",
                                            summary_name));
  html += "</div>\n";
  for (int64_t h = 0; h < H; ++h) {
    const std::string LH = fmt::format("L{}_H{}", l, h);
    const std::vector<double> ah = head_block(maps.a, h, T);
    html += fmt::format("<h3>head {}{}</h3><div class=\"row\">\n", h, h == r_head ? " (the runway head)" : "");
    html += figure(write_map(LH + "_A", ah, fmt::format("layer {} head {} A", l, h), false),
                   "A = softmax(S): un-rewired attention");
    if (maps.rewired) {
      const std::vector<double> arh = head_block(maps.a_rewired, h, T);
      std::vector<double> diff(arh.size());
      for (size_t i = 0; i < diff.size(); ++i) diff[i] = arh[i] - ah[i];
      html += figure(write_map(LH + "_Arew", arh, fmt::format("layer {} head {} A'", l, h), false),
                     "A' = softmax(S - beta R): the attention used");
      html += figure(write_map(LH + "_diff", diff, fmt::format("layer {} head {} A' - A", l, h), true),
                     "A' - A: red gained, blue lost");
    }
    html += "</div>\n";
  }
  html += "</section>\n";
  layer_sections_ += html;
  layers_.push_back({{"layer", l}, {"rewired", maps.rewired}});
}

std::string InspectFolder::page(const InspectResult& result) const {
  const std::string text(bytes_.begin(), bytes_.end());
  std::string html =
      html_page_start(fmt::format("runway inspect: {}", options_.title.empty() ? "model" : options_.title));
  html += header_section(model_, options_.title, text, T_);
  html += cascade_section(result.cascade);
  html += layer_sections_;
  html += html_page_end();
  return html;
}

InspectResult InspectFolder::finish(const nn::CascadeReport& cascade) {
  InspectResult result;
  result.cascade = cascade;
  const std::string chart =
      cascade_chart_svg(result.cascade, fmt::format("Runway cascade: {} model", model_kind(model_)));
  write_text_file((fs::path(out_dir_) / "cascade.svg").string(), chart);
  write_text_file((fs::path(out_dir_) / "cascade.json").string(), nn::to_json(result.cascade).dump(1) + "\n");
  files_.push_back("cascade.svg");
  files_.push_back("cascade.json");

  const std::string text(bytes_.begin(), bytes_.end());
  result.summary = {{"title", options_.title},
                    {"text", printable_excerpt(text, static_cast<size_t>(T_) + 8)},
                    {"length", T_},
                    {"tokens", labels_},
                    {"attention", model_kind(model_)},
                    {"n_layer", model_.n_layer},
                    {"n_head", model_.n_head},
                    {"n_embd", model_.n_embd},
                    {"runway_head", model_.runway.runway_head},
                    {"runway_summary", runway_summary_name(model_.runway.summary)},
                    {"runway_beta", model_.runway.beta},
                    {"layers", layers_},
                    {"cascade", nn::to_json(result.cascade)},
                    {"files", files_}};
  write_text_file((fs::path(out_dir_) / "inspect.json").string(), result.summary.dump(1) + "\n");
  if (options_.write_html) write_text_file((fs::path(out_dir_) / "index.html").string(), page(result));
  return result;
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

}  // namespace runway::viz
