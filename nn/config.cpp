#include "nn/config.h"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "engine/file_io.h"
#include "engine/ops/attention_blockwise.h"
#include "nn/data.h"

namespace runway::nn {

using nlohmann::json;

// ---- ranges -------------------------------------------------------------------------

bool NumberRange::contains(double v) const {
  if (!std::isfinite(v)) return false;
  if (min_open ? !(v > min) : !(v >= min)) return false;
  if (max_open ? !(v < max) : !(v <= max)) return false;
  return true;
}

namespace {
std::string bound_text(double v, bool integer) {
  if (integer && std::abs(v) < 9.2e18) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}
}  // namespace

std::string NumberRange::describe(bool integer) const {
  const bool has_min = std::isfinite(min), has_max = std::isfinite(max);
  if (has_min && has_max)
    return fmt::format("in {}{}, {}{}", min_open ? "(" : "[", bound_text(min, integer), bound_text(max, integer),
                       max_open ? ")" : "]");
  if (has_min) return fmt::format("{} {}", min_open ? ">" : ">=", bound_text(min, integer));
  if (has_max) return fmt::format("{} {}", max_open ? "<" : "<=", bound_text(max, integer));
  return integer ? "any integer" : "any finite number";
}

const char* field_type_name(FieldType t) {
  switch (t) {
    case FieldType::Int: return "int";
    case FieldType::UInt: return "uint";
    case FieldType::Float: return "float";
    case FieldType::Bool: return "bool";
    case FieldType::String: return "string";
    case FieldType::IntList: return "int list";
    case FieldType::Enum: return "enum";
  }
  return "?";
}

// ---- the table ------------------------------------------------------------------------

namespace {

// A reference to one member of a TrainConfig, const or not: one generic lambda serves
// both the getter and the setter of a row.
#define RUNWAY_MEMBER(path) [](auto& c) -> auto& { return c.path; }

template <typename T, typename Ref>
ConfigField member_field(const char* key, FieldType type, Ref ref, NumberRange range, const char* help) {
  ConfigField f;
  f.key = key;
  f.type = type;
  f.help = help;
  f.range = range;
  f.get = [ref](const TrainConfig& c) { return json(ref(c)); };
  f.set = [ref](TrainConfig& c, const json& v) { ref(c) = v.get<T>(); };
  return f;
}

template <typename Ref>
ConfigField int_field(const char* key, Ref ref, NumberRange range, const char* help) {
  return member_field<int64_t>(key, FieldType::Int, ref, range, help);
}
template <typename Ref>
ConfigField float_field(const char* key, Ref ref, NumberRange range, const char* help) {
  return member_field<double>(key, FieldType::Float, ref, range, help);
}

ConfigField enum_field(const char* key, std::vector<std::string> allowed, std::function<json(const TrainConfig&)> get,
                       std::function<void(TrainConfig&, const json&)> set, const char* help) {
  ConfigField f;
  f.key = key;
  f.type = FieldType::Enum;
  f.help = help;
  f.allowed = std::move(allowed);
  f.get = std::move(get);
  f.set = std::move(set);
  return f;
}

constexpr double kMaxSteps = 1e12;     // far beyond any run, far below int64 overflow in step arithmetic
constexpr double kMaxRows = 1 << 20;   // rows per batch, batches per evaluation
constexpr double kMaxLayers = 1024;
constexpr double kMaxHeads = 1024;

std::vector<ConfigField> make_fields() {
  std::vector<ConfigField> f;
  // model
  f.push_back(int_field("n_layer", RUNWAY_MEMBER(model.n_layer), NumberRange::closed(1, kMaxLayers),
                        "transformer blocks"));
  f.push_back(int_field("n_head", RUNWAY_MEMBER(model.n_head), NumberRange::closed(1, kMaxHeads),
                        "attention heads per block; must divide n_embd"));
  f.push_back(int_field("n_embd", RUNWAY_MEMBER(model.n_embd), NumberRange::closed(1, 65536),
                        "model width C; n_embd / n_head is the head width (even for rope)"));
  f.push_back(int_field("seq_len", RUNWAY_MEMBER(model.seq_len), NumberRange::closed(1, 1 << 20),
                        "training length L (bytes per training window)"));
  f.push_back(enum_field(
      "pos", {"rope", "none", "learned", "alibi"},
      [](const TrainConfig& c) { return json(position_encoding_name(c.model.pos)); },
      [](TrainConfig& c, const json& v) { c.model.pos = parse_position_encoding(v.get<std::string>()); },
      "positional encoding; learned cannot run past L"));
  f.push_back(enum_field(
      "attention", {"standard", "rewired"},
      [](const TrainConfig& c) { return json(c.model.rewired ? "rewired" : "standard"); },
      [](TrainConfig& c, const json& v) { c.model.rewired = v.get<std::string>() == "rewired"; },
      "standard or runway-rewired causal attention"));
  f.push_back(enum_field(
      "runway_summary", {"absorption", "two_hop"},
      [](const TrainConfig& c) { return json(runway_summary_name(c.model.runway.summary)); },
      [](TrainConfig& c, const json& v) { c.model.runway.summary = parse_runway_summary(v.get<std::string>()); },
      "the runway summary R of rewired attention"));
  f.push_back(float_field("runway_beta", RUNWAY_MEMBER(model.runway.beta), NumberRange{},
                          "rewiring strength, S' = S - beta R (0 reproduces standard attention; negative amplifies)"));
  f.push_back(int_field("runway_head", RUNWAY_MEMBER(model.runway.runway_head), NumberRange::closed(0, kMaxHeads - 1),
                        "the head that measures the runway; below n_head"));
  f.push_back(member_field<bool>("runway_detach", FieldType::Bool, RUNWAY_MEMBER(model.runway.detach), NumberRange{},
                                 "treat R as a constant in the backward (ablation)"));
  f.push_back(member_field<std::vector<int64_t>>(
      "rewired_layers", FieldType::IntList, RUNWAY_MEMBER(model.rewired_layers), NumberRange::closed(0, kMaxLayers - 1),
      "the rewired layers, comma separated (empty: all), each below n_layer"));
  f.push_back(float_field("rope_base", RUNWAY_MEMBER(model.rope_base), NumberRange::above(0), "RoPE frequency base"));
  f.push_back(enum_field(
      "attention_impl", {"auto", "materialized", "blockwise"},
      [](const TrainConfig& c) { return json(attention_impl_name(c.model.attention_impl)); },
      [](TrainConfig& c, const json& v) { c.model.attention_impl = parse_attention_impl(v.get<std::string>()); },
      ""));
  f.back().omitted_when_default = true;
  f.back().help = fmt::format("attention kernels, same numbers: materialized keeps the T x T maps, blockwise O(T) memory, "
                              "auto = blockwise from {} positions (never for two_hop on one sequence)",
                              kBlockwiseAutoFrom);
  // data
  f.push_back(member_field<std::string>(
      "data", FieldType::String, RUNWAY_MEMBER(data), NumberRange{},
      "a text file or a folder of text files (recursive; .dat, .u8, symlinks, hidden and binary files skipped)"));
  f.push_back(float_field("val_fraction", RUNWAY_MEMBER(val_fraction), NumberRange::open(0, 1),
                          "validation share, split by whole files (or the last bytes of a single file)"));
  // optimisation
  f.push_back(int_field("steps", RUNWAY_MEMBER(steps), NumberRange::closed(1, kMaxSteps), "optimizer steps"));
  f.push_back(int_field("batch_size", RUNWAY_MEMBER(batch_size), NumberRange::closed(1, kMaxRows), "rows per micro-batch"));
  f.push_back(int_field("grad_accum", RUNWAY_MEMBER(grad_accum), NumberRange::closed(1, kMaxRows),
                        "micro-batches per optimizer step"));
  f.push_back(int_field("warmup", RUNWAY_MEMBER(warmup), NumberRange::closed(0, kMaxSteps), "linear warmup steps"));
  f.push_back(float_field("lr", RUNWAY_MEMBER(lr), NumberRange::above(0), "peak learning rate"));
  f.push_back(float_field("min_lr_ratio", RUNWAY_MEMBER(min_lr_ratio), NumberRange::closed(0, 1),
                          "cosine floor as a fraction of the peak learning rate"));
  f.push_back(float_field("weight_decay", RUNWAY_MEMBER(adamw.weight_decay), NumberRange::at_least(0),
                          "AdamW weight decay, on the matmul weights only (not biases, LayerNorm, embeddings)"));
  f.push_back(float_field("beta1", RUNWAY_MEMBER(adamw.beta1), NumberRange::closed_open(0, 1), "AdamW beta1"));
  f.push_back(float_field("beta2", RUNWAY_MEMBER(adamw.beta2), NumberRange::closed_open(0, 1), "AdamW beta2"));
  f.push_back(float_field("grad_clip", RUNWAY_MEMBER(grad_clip), NumberRange::at_least(0),
                          "clip the global gradient norm to this (0 disables)"));
  // task mixing
  f.push_back(float_field("mix_passkey", RUNWAY_MEMBER(mix_passkey), NumberRange::closed(0, 1),
                          "fraction of training rows that start with a passkey document of random length "
                          "(needs seq_len >= 106)"));
  f.push_back(float_field("mix_recall", RUNWAY_MEMBER(mix_recall), NumberRange::closed(0, 1),
                          "fraction of training rows ending in an associative-recall example"));
  f.push_back(int_field("recall_pairs", RUNWAY_MEMBER(recall_pairs), NumberRange::closed(1, 676),
                        "key-value pairs of a recall example (6 * (pairs + queries) + 1 <= seq_len + 1)"));
  f.push_back(int_field("recall_queries", RUNWAY_MEMBER(recall_queries), NumberRange::closed(1, 676),
                        "queries of a recall example; at most recall_pairs"));
  // evaluation and logging
  f.push_back(int_field("eval_every", RUNWAY_MEMBER(eval_every), NumberRange::closed(1, kMaxSteps),
                        "validate every this many steps (and at the end)"));
  f.push_back(int_field("eval_batches", RUNWAY_MEMBER(eval_batches), NumberRange::closed(1, kMaxRows),
                        "validation batches per evaluation"));
  f.push_back(int_field("log_every", RUNWAY_MEMBER(log_every), NumberRange::closed(1, kMaxSteps),
                        "print a progress line every this many steps"));
  f.push_back(member_field<uint64_t>(
      "seed", FieldType::UInt, RUNWAY_MEMBER(seed), NumberRange::closed(0, 18446744073709551615.0),
      "initialisation and data order; the same seed and data give the same losses bit for bit"));
  return f;
}

#undef RUNWAY_MEMBER

}  // namespace

const std::vector<ConfigField>& train_config_fields() {
  static const std::vector<ConfigField> fields = make_fields();
  return fields;
}

const ConfigField* find_config_field(const std::string& key) {
  for (const ConfigField& f : train_config_fields())
    if (f.key == key) return &f;
  return nullptr;
}

std::string ConfigField::flag() const {
  std::string s = "--" + key;
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

json ConfigField::default_value() const { return get(TrainConfig{}); }

std::string ConfigField::default_text() const {
  const json d = default_value();
  if (d.is_string()) return d.get<std::string>();
  if (d.is_array() && d.empty()) return "all";
  if (d.is_array()) {
    std::string s;
    for (const auto& e : d) s += (s.empty() ? "" : ",") + e.dump();
    return s;
  }
  return d.dump();
}

std::string ConfigField::allowed_text() const {
  switch (type) {
    case FieldType::Enum: {
      std::string s;
      for (const auto& a : allowed) s += (s.empty() ? "" : ", ") + a;
      return s;
    }
    case FieldType::Bool: return "true or false";
    case FieldType::String: return "any text";
    case FieldType::UInt: return "0 .. 2^64-1";
    case FieldType::IntList: return "each " + range.describe(true);
    case FieldType::Int: return range.describe(true);
    case FieldType::Float: return range.describe(false) == "any finite number" ? "any finite number"
                                                                                : range.describe(false) + ", finite";
  }
  return "";
}

// ---- checking a value --------------------------------------------------------------------

namespace {

[[noreturn]] void wrong_type(const std::string& name, const char* expected, const json& value) {
  throw Error(fmt::format("{} has the wrong type: expected {}, got {}", name, expected, value.dump()));
}

void check_integer(const ConfigField& field, const json& value, const std::string& name, bool is_unsigned) {
  if (value.is_number_float()) {
    const double v = value.get<double>();
    throw Error(fmt::format("{} must be an integer, got {}{}", name, value.dump(),
                            std::isfinite(v) && v == std::floor(v) ? " (write it without a decimal point or exponent)" : ""));
  }
  if (!value.is_number_integer()) wrong_type(name, "an integer", value);
  if (is_unsigned) {
    if (!value.is_number_unsigned() && value.get<int64_t>() < 0)
      throw Error(fmt::format("{} must be >= 0, got {}", name, value.dump()));
    return;  // every uint64 is allowed
  }
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw Error(fmt::format("{} must be {}, got {}", name, field.range.describe(true), value.dump()));
  const int64_t v = value.get<int64_t>();
  if (!field.range.contains(static_cast<double>(v)))
    throw Error(fmt::format("{} must be {}, got {}", name, field.range.describe(true), v));
}

}  // namespace

void check_field_value(const ConfigField& field, const json& value, const std::string& name) {
  switch (field.type) {
    case FieldType::Int: return check_integer(field, value, name, false);
    case FieldType::UInt: return check_integer(field, value, name, true);
    case FieldType::Float: {
      if (!value.is_number()) wrong_type(name, "a number", value);
      const double v = value.get<double>();
      if (!std::isfinite(v)) throw Error(fmt::format("{} must be a finite number, got {}", name, v));
      if (!field.range.contains(v)) throw Error(fmt::format("{} must be {}, got {}", name, field.range.describe(false), v));
      return;
    }
    case FieldType::Bool:
      if (!value.is_boolean()) wrong_type(name, "true or false", value);
      return;
    case FieldType::String:
      if (!value.is_string()) wrong_type(name, "a string", value);
      return;
    case FieldType::IntList: {
      if (!value.is_array()) wrong_type(name, "a list of integers", value);
      for (const json& e : value) {
        if (!e.is_number_integer() || e.is_number_float())
          throw Error(fmt::format("{} must be a list of integers, got {}", name, value.dump()));
        if (e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          throw Error(fmt::format("{}: every element must be {}, got {}", name, field.range.describe(true), e.dump()));
        if (!field.range.contains(static_cast<double>(e.get<int64_t>())))
          throw Error(fmt::format("{}: every element must be {}, got {}", name, field.range.describe(true), e.dump()));
      }
      return;
    }
    case FieldType::Enum: {
      if (!value.is_string()) wrong_type(name, "a string", value);
      const std::string s = value.get<std::string>();
      if (std::find(field.allowed.begin(), field.allowed.end(), s) == field.allowed.end())
        throw Error(fmt::format("{}: '{}' is not allowed: allowed values are {}", name, s, field.allowed_text()));
      return;
    }
  }
}

// ---- TrainConfig --------------------------------------------------------------------------

TrainConfig::TrainConfig() = default;

json TrainConfig::to_json() const {
  json j = json::object();
  for (const ConfigField& f : train_config_fields()) {
    json value = f.get(*this);
    if (f.omitted_when_default && value == f.default_value()) continue;
    j[f.key] = std::move(value);
  }
  return j;
}

void TrainConfig::update_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(fmt::format("{}: the config must be a JSON object", source));
  for (const auto& [key, value] : j.items()) {
    if (key == "parameter_count") continue;  // informational, written with checkpoints
    if (key == "device")
      throw Error(fmt::format("{}: 'device' is not a config key: the device belongs to a run, not to a model or "
                              "checkpoint; choose it with --device (cpu or cuda)", source));
    const ConfigField* field = find_config_field(key);
    if (!field) {
      std::string allowed;
      for (const ConfigField& f : train_config_fields()) allowed += (allowed.empty() ? "" : ", ") + f.key;
      throw Error(fmt::format("{}: unknown key '{}'; allowed keys: {}", source, key, allowed));
    }
    try {
      check_field_value(*field, value, fmt::format("key '{}'", key));
      field->set(*this, value);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", source, e.what()));
    }
  }
}

void TrainConfig::update_from_file(const std::string& path) { update_from_json(load_json_file(path), path); }

void TrainConfig::validate() const {
  // Every field in its range: a config built in code is checked like one read from JSON.
  for (const ConfigField& f : train_config_fields()) check_field_value(f, f.get(*this), f.key);
  model.validate();
  // A data path that exists must be a file or a folder: a FIFO or a device is refused
  // here, before the trainer creates its folder (stat does not block on a FIFO).
  std::error_code ec;
  const auto data_status = std::filesystem::status(data, ec);
  if (!ec && std::filesystem::exists(data_status) && !std::filesystem::is_regular_file(data_status) &&
      !std::filesystem::is_directory(data_status))
    throw Error(fmt::format("data: {} is not a regular file or a folder (a FIFO, device or socket is not read)", data));
  if (mix_passkey > 0 && model.seq_len + 1 < passkey_min_length())
    throw Error(fmt::format("mix_passkey needs seq_len >= {} (a passkey document is at least {} bytes), got {}",
                            passkey_min_length() - 1, passkey_min_length(), model.seq_len));
  if (mix_recall > 0) {
    if (recall_queries > recall_pairs)
      throw Error(fmt::format("recall_queries must be at most recall_pairs (each query asks a distinct pair), got {} and {}",
                              recall_queries, recall_pairs));
    if (recall_length(recall_pairs, recall_queries) > model.seq_len + 1)
      throw Error(fmt::format("recall_pairs {} + recall_queries {} make {}-byte examples, longer than seq_len + 1 = {}",
                              recall_pairs, recall_queries, recall_length(recall_pairs, recall_queries), model.seq_len + 1));
  }
  check_fits_in_memory(training_memory_bytes(*this),
                       fmt::format("training this model ({} parameters) on batches of {} x {} bytes",
                                   model_parameter_count(model), batch_size, model.seq_len),
                       "reduce n_layer, n_embd, seq_len or batch_size (grad_accum keeps the tokens per step)");
}

// ---- docs ----------------------------------------------------------------------------------

std::string config_fields_markdown() {
  std::string s = "| flag | JSON key | type | default | allowed | meaning |\n|---|---|---|---|---|---|\n";
  for (const ConfigField& f : train_config_fields()) {
    const std::string d = f.default_text();
    s += fmt::format("| `{}` | `{}` | {} | {} | {} | {} |\n", f.flag(), f.key, field_type_name(f.type),
                     d.empty() ? "(empty)" : "`" + d + "`", f.allowed_text(), f.help);
  }
  return s;
}

// ---- memory --------------------------------------------------------------------------------

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

namespace {
// Estimates in double (the products overflow 64 bits for absurd shapes), saturated.
uint64_t saturate(double bytes) {
  return bytes >= 1.8e19 ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(bytes);
}
double parameters(const GPTConfig& m) {
  const double C = static_cast<double>(m.n_embd), L = static_cast<double>(m.n_layer);
  double p = static_cast<double>(m.vocab_size) * C + 2 * C;  // wte (tied), ln_f
  if (m.pos == PositionEncoding::Learned) p += static_cast<double>(m.seq_len) * C;
  return p + L * (12 * C * C + 13 * C);  // per block: qkv, proj, fc, proj weights and biases, two LayerNorms
}
double layers_rewired(const GPTConfig& m) {
  if (!m.rewired) return 0;
  return m.rewired_layers.empty() ? static_cast<double>(m.n_layer) : static_cast<double>(m.rewired_layers.size());
}
constexpr double kFloat = 4;  // float32
}  // namespace

uint64_t model_parameter_count(const GPTConfig& m) { return saturate(parameters(m)); }

// Whether `impl` runs the blockwise kernels at T positions (engine/ops/attention.h).
bool blockwise_at(const GPTConfig& m, double B, double T) {
  return m.attention_impl == AttentionImpl::Blockwise ||
         (m.attention_impl == AttentionImpl::Auto &&
          T >= static_cast<double>(blockwise_auto_from(m.rewired, m.runway, static_cast<int64_t>(B))));
}

// Blockwise scratch (engine/ops/attention_cpu_blockwise.cpp), a bound: the rewired
// backward of one batch item holds a stripe of dS' per head, ten for the runway steps and
// one of logits per thread of its team. One item per thread with 64-row stripes, or one
// item shared by the team with 128-row stripes. And two_hop's backward, which
// materialises one batch item.
double blockwise_scratch(const GPTConfig& m, double T) {
  const double H = static_cast<double>(m.n_head), threads = std::max(2, omp_get_max_threads());
  double s = static_cast<double>(kBlockwiseQueryBlock) * T * threads * (H + 10 + threads);
  if (m.rewired && m.runway.summary == RunwaySummary::TwoHop) s += (H + 3) * T * T;
  return s;
}

uint64_t training_memory_bytes(const TrainConfig& c) {
  const GPTConfig& m = c.model;
  const double B = static_cast<double>(c.batch_size), T = static_cast<double>(m.seq_len),
               C = static_cast<double>(m.n_embd), H = static_cast<double>(m.n_head), L = static_cast<double>(m.n_layer);
  const double weights = 4 * parameters(m);                    // parameters, gradients, two AdamW moments
  const double activations = 20 * B * T * C * L;               // what each block keeps for the backward
  // Materialised: A' per layer, P and R when rewired. Blockwise: per-row statistics only.
  const double maps = blockwise_at(m, B, T) ? (B * H * T + B * T) * L + blockwise_scratch(m, T)
                                         : B * H * T * T * L + 2 * B * T * T * layers_rewired(m);
  const double logits = 3 * B * T * static_cast<double>(m.vocab_size);
  return saturate(kFloat * (weights + activations + maps + logits));
}

uint64_t inference_memory_bytes(const GPTConfig& m, int64_t batch, int64_t T_) {
  const double B = static_cast<double>(batch), T = static_cast<double>(T_), C = static_cast<double>(m.n_embd),
               H = static_cast<double>(m.n_head);
  // One layer at a time without the tape.
  const double maps = blockwise_at(m, B, T) ? B * H * T + B * T + blockwise_scratch(m, T)
                                         : B * H * T * T + (m.rewired ? 2 * B * T * T : 0);
  return saturate(kFloat * (parameters(m) + 8 * B * T * C + maps + 2 * B * T * static_cast<double>(m.vocab_size)));
}

uint64_t decoding_memory_bytes(const GPTConfig& m, int64_t length) {
  const double t = static_cast<double>(length), C = static_cast<double>(m.n_embd), L = static_cast<double>(m.n_layer);
  double cache = 2 * t * C * L;  // keys and values of every layer
  if (m.rewired && m.runway.summary == RunwaySummary::TwoHop) cache += t * t * layers_rewired(m);  // runway rows
  return saturate(kFloat * (parameters(m) + cache));
}

std::string format_bytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024 * 1024) return fmt::format("{:.1f} TiB", b / (1024.0 * 1024 * 1024 * 1024));
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.1f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

void check_fits_in_memory(uint64_t bytes, const std::string& what, const std::string& advice) {
  const uint64_t physical = physical_memory_bytes();
  if (physical == 0 || bytes <= physical) return;
  const bool saturated = bytes == std::numeric_limits<uint64_t>::max();  // the estimate overflowed 64 bits
  throw Error(fmt::format("{} needs {} {}, more than this machine's {} of memory; {}", what,
                          saturated ? "more than" : "at least", format_bytes(bytes), format_bytes(physical), advice));
}

// ---- files ----------------------------------------------------------------------------------

json load_json_file(const std::string& path) {
  const std::string text = read_regular_file(path, "cannot read JSON file", "a JSON file");
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("'{}' is not valid JSON: {}", path, e.what()));
  }
}

}  // namespace runway::nn
