#include "nn/train.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/autograd.h"
#include "engine/file_io.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "nn/data.h"
#include "nn/device.h"

namespace runway::nn {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ------------------------------------------------------------------------

TrainConfig::TrainConfig() = default;

json TrainConfig::to_json() const {
  return json{
      {"n_layer", model.n_layer},
      {"n_head", model.n_head},
      {"n_embd", model.n_embd},
      {"seq_len", model.seq_len},
      {"pos", position_encoding_name(model.pos)},
      {"attention", model.rewired ? "rewired" : "standard"},
      {"runway_summary", runway_summary_name(model.runway.summary)},
      {"runway_beta", model.runway.beta},
      {"runway_head", model.runway.runway_head},
      {"runway_detach", model.runway.detach},
      {"rewired_layers", model.rewired_layers},
      {"rope_base", model.rope_base},
      {"data", data},
      {"val_fraction", val_fraction},
      {"steps", steps},
      {"batch_size", batch_size},
      {"grad_accum", grad_accum},
      {"warmup", warmup},
      {"lr", lr},
      {"min_lr_ratio", min_lr_ratio},
      {"weight_decay", adamw.weight_decay},
      {"beta1", adamw.beta1},
      {"beta2", adamw.beta2},
      {"grad_clip", grad_clip},
      {"mix_passkey", mix_passkey},
      {"mix_recall", mix_recall},
      {"recall_pairs", recall_pairs},
      {"recall_queries", recall_queries},
      {"eval_every", eval_every},
      {"eval_batches", eval_batches},
      {"log_every", log_every},
      {"seed", seed},
  };
}

void TrainConfig::update_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(fmt::format("{}: the config must be a JSON object", source));
  const json known = to_json();
  for (const auto& [key, value] : j.items()) {
    if (key == "parameter_count") continue;  // informational, written with checkpoints
    if (key == "device")
      throw Error(fmt::format("{}: 'device' is not a config key: the device belongs to a run, not to a model or "
                              "checkpoint; choose it with --device (cpu or cuda)", source));
    if (!known.contains(key)) {
      std::string allowed;
      for (const auto& [k, v] : known.items()) allowed += (allowed.empty() ? "" : ", ") + k;
      throw Error(fmt::format("{}: unknown key '{}'; allowed keys: {}", source, key, allowed));
    }
    try {
      if (key == "n_layer") model.n_layer = value.get<int64_t>();
      else if (key == "n_head") model.n_head = value.get<int64_t>();
      else if (key == "n_embd") model.n_embd = value.get<int64_t>();
      else if (key == "seq_len") model.seq_len = value.get<int64_t>();
      else if (key == "pos") model.pos = parse_position_encoding(value.get<std::string>());
      else if (key == "attention") {
        const auto a = value.get<std::string>();
        if (a != "standard" && a != "rewired")
          throw Error(fmt::format("attention '{}': allowed values are standard, rewired", a));
        model.rewired = a == "rewired";
      } else if (key == "runway_summary") model.runway.summary = parse_runway_summary(value.get<std::string>());
      else if (key == "runway_beta") model.runway.beta = value.get<double>();
      else if (key == "runway_head") model.runway.runway_head = value.get<int64_t>();
      else if (key == "runway_detach") model.runway.detach = value.get<bool>();
      else if (key == "rewired_layers") model.rewired_layers = value.get<std::vector<int64_t>>();
      else if (key == "rope_base") model.rope_base = value.get<double>();
      else if (key == "data") data = value.get<std::string>();
      else if (key == "val_fraction") val_fraction = value.get<double>();
      else if (key == "steps") steps = value.get<int64_t>();
      else if (key == "batch_size") batch_size = value.get<int64_t>();
      else if (key == "grad_accum") grad_accum = value.get<int64_t>();
      else if (key == "warmup") warmup = value.get<int64_t>();
      else if (key == "lr") lr = value.get<double>();
      else if (key == "min_lr_ratio") min_lr_ratio = value.get<double>();
      else if (key == "weight_decay") adamw.weight_decay = value.get<double>();
      else if (key == "beta1") adamw.beta1 = value.get<double>();
      else if (key == "beta2") adamw.beta2 = value.get<double>();
      else if (key == "grad_clip") grad_clip = value.get<double>();
      else if (key == "mix_passkey") mix_passkey = value.get<double>();
      else if (key == "mix_recall") mix_recall = value.get<double>();
      else if (key == "recall_pairs") recall_pairs = value.get<int64_t>();
      else if (key == "recall_queries") recall_queries = value.get<int64_t>();
      else if (key == "eval_every") eval_every = value.get<int64_t>();
      else if (key == "eval_batches") eval_batches = value.get<int64_t>();
      else if (key == "log_every") log_every = value.get<int64_t>();
      else if (key == "seed") seed = value.get<uint64_t>();
    } catch (const json::exception& e) {
      throw Error(fmt::format("{}: key '{}' has the wrong type ({}): {}", source, key, value.dump(), e.what()));
    } catch (const Error& e) {
      throw Error(fmt::format("{}: key '{}': {}", source, key, e.what()));
    }
  }
}

void TrainConfig::validate() const {
  model.validate();
  auto positive = [](const char* field, double v) {
    if (!(v > 0)) throw Error(fmt::format("{} must be > 0, got {}", field, v));
  };
  positive("steps", static_cast<double>(steps));
  positive("batch_size", static_cast<double>(batch_size));
  positive("grad_accum", static_cast<double>(grad_accum));
  positive("lr", lr);
  positive("eval_every", static_cast<double>(eval_every));
  positive("eval_batches", static_cast<double>(eval_batches));
  positive("log_every", static_cast<double>(log_every));
  if (warmup < 0) throw Error(fmt::format("warmup must be >= 0, got {}", warmup));
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) throw Error(fmt::format("min_lr_ratio must be in [0, 1], got {}", min_lr_ratio));
  if (!(val_fraction > 0 && val_fraction < 1)) throw Error(fmt::format("val_fraction must be in (0, 1), got {}", val_fraction));
  if (!(mix_passkey >= 0 && mix_passkey <= 1)) throw Error(fmt::format("mix_passkey must be in [0, 1], got {}", mix_passkey));
  if (mix_passkey > 0 && model.seq_len + 1 < passkey_min_length())
    throw Error(fmt::format("mix_passkey needs seq_len >= {} (a passkey document is at least {} bytes), got {}",
                            passkey_min_length() - 1, passkey_min_length(), model.seq_len));
  if (!(mix_recall >= 0 && mix_recall <= 1)) throw Error(fmt::format("mix_recall must be in [0, 1], got {}", mix_recall));
  if (mix_recall > 0) {
    if (recall_pairs < 1 || recall_pairs > 676 || recall_queries < 1 || recall_queries > recall_pairs)
      throw Error(fmt::format("recall_pairs must be in [1, 676] and recall_queries in [1, recall_pairs], got {} and {}",
                              recall_pairs, recall_queries));
    if (recall_length(recall_pairs, recall_queries) > model.seq_len + 1)
      throw Error(fmt::format("recall_pairs {} + recall_queries {} make {}-byte examples, longer than seq_len + 1 = {}",
                              recall_pairs, recall_queries, recall_length(recall_pairs, recall_queries), model.seq_len + 1));
  }
  if (!(adamw.beta1 >= 0 && adamw.beta1 < 1)) throw Error(fmt::format("beta1 must be in [0, 1), got {}", adamw.beta1));
  if (!(adamw.beta2 >= 0 && adamw.beta2 < 1)) throw Error(fmt::format("beta2 must be in [0, 1), got {}", adamw.beta2));
  if (!(adamw.weight_decay >= 0)) throw Error(fmt::format("weight_decay must be >= 0, got {}", adamw.weight_decay));
}

// ---- files -------------------------------------------------------------------------

void write_text_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, "write", [&](const ByteSink& write) { write(text.data(), text.size()); });
}

namespace {

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read '{}': no such file or not readable", path));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(fmt::format("'{}' is not valid JSON: {}", path, e.what()));
  }
}

// Loads named tensors into the parameters, checking names, shapes and dtypes.
void load_into(const std::vector<NamedParameter>& params, const SafetensorsFile& file, const std::string& prefix,
               const std::string& path, std::vector<Tensor>* targets = nullptr) {
  std::map<std::string, Tensor> by_name;  // this prefix's tensors
  for (const auto& [name, t] : file.tensors)
    if (name.compare(0, prefix.size(), prefix) == 0) by_name.emplace(name, t);
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string name = prefix + params[i].name;
    auto it = by_name.find(name);
    if (it == by_name.end()) throw Error(fmt::format("checkpoint '{}' has no tensor '{}'", path, name));
    Tensor dst = targets ? (*targets)[i] : params[i].tensor;
    if (it->second.shape() != dst.shape())
      throw Error(fmt::format("checkpoint '{}': tensor '{}' has shape {}, the model needs {}", path, name,
                              it->second.shape_str(), dst.shape_str()));
    assign(dst, it->second.to(dst.dtype()).to(dst.device()));
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw Error(fmt::format("checkpoint '{}' has tensor '{}' that the model does not have", path, by_name.begin()->first));
}

std::string u64_hex(uint64_t v) { return fmt::format("{:016x}", v); }
uint64_t parse_hex(const json& j, const std::string& path) {
  try {
    return std::stoull(j.get<std::string>(), nullptr, 16);
  } catch (const std::exception&) {
    throw Error(fmt::format("'{}': corrupt RNG state", path));
  }
}

}  // namespace

void TrainConfig::update_from_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw Error(fmt::format("cannot read '{}': it is a folder", path));
  update_from_json(read_json_file(path), path);
}

// ---- trainer --------------------------------------------------------------------------

struct Trainer::Data {
  ByteCorpus corpus;
  std::unique_ptr<WindowSampler> sampler;
};

Trainer::~Trainer() = default;

const std::vector<uint8_t>& Trainer::validation_bytes() const { return data_->corpus.val; }

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

Trainer::Trainer(TrainConfig config, std::string out_dir, bool resume, int64_t steps_override, Device device)
    : config_(std::move(config)), out_dir_(std::move(out_dir)), data_gen_(0), device_(device) {
  require_device(device_);  // before any file is written
  if (resume) {
    TrainConfig saved;
    saved.update_from_json(read_json_file(out_dir_ + "/config.json"), out_dir_ + "/config.json");
    config_ = saved;
    if (steps_override > 0) config_.steps = steps_override;
  }
  config_.validate();
  fs::create_directories(out_dir_);
  data_ = std::make_unique<Data>();
  data_->corpus = load_corpus(config_.data, config_.val_fraction);
  data_->sampler = std::make_unique<WindowSampler>(data_->corpus.train, config_.model.seq_len);
  Generator init(config_.seed);
  model_ = std::make_unique<GPT>(config_.model, init);
  model_->to(device_);  // before the optimizer, whose moments follow the parameters' device
  optimizer_ = std::make_unique<AdamW>(model_->named_parameters(), config_.adamw);
  data_gen_.manual_seed(config_.seed ^ 0x5eed5eed5eed5eedull);
  if (!resume) {
    json c = config_.to_json();
    c["parameter_count"] = model_->parameter_count();
    write_text_file_atomic(out_dir_ + "/config.json", c.dump(2) + "\n");
    return;
  }
  // Resume: state.json, optimizer.safetensors and model.safetensors must agree on the step.
  const std::string state_path = out_dir_ + "/state.json";
  const json state = read_json_file(state_path);
  try {
    step_ = state.at("step").get<int64_t>();
    Generator::State st{};
    for (int i = 0; i < 4; ++i) st.s[i] = parse_hex(state.at("data_rng").at(i), state_path);
    st.has_spare = state.at("data_rng_has_spare").get<bool>();
    const uint64_t spare_bits = parse_hex(state.at("data_rng_spare_bits"), state_path);
    std::memcpy(&st.spare, &spare_bits, sizeof(double));
    data_gen_.set_state(st);
  } catch (const json::exception& e) {
    throw Error(fmt::format("'{}' is missing a field or has a wrong type: {}", state_path, e.what()));
  }
  const std::string model_path = out_dir_ + "/model.safetensors", opt_path = out_dir_ + "/optimizer.safetensors";
  const SafetensorsFile model_file = read_safetensors(model_path);
  const SafetensorsFile opt_file = read_safetensors(opt_path);
  for (const auto* f : {&model_file, &opt_file}) {
    auto it = f->metadata.find("step");
    if (it == f->metadata.end() || it->second != std::to_string(step_))
      throw Error(fmt::format("checkpoint in '{}' is inconsistent: state.json is at step {} but {} says {}; "
                              "the save was interrupted, restore a complete checkpoint",
                              out_dir_, step_, f == &model_file ? "model.safetensors" : "optimizer.safetensors",
                              it == f->metadata.end() ? "nothing" : it->second));
  }
  load_into(model_->named_parameters(), model_file, "", model_path);
  load_into(model_->named_parameters(), opt_file, "m.", opt_path, &optimizer_->first_moments());
  load_into(model_->named_parameters(), opt_file, "v.", opt_path, &optimizer_->second_moments());
  optimizer_->set_steps_taken(step_);
}

void Trainer::save_checkpoint() const {
  const std::map<std::string, std::string> meta{{"step", std::to_string(step_)}, {"format", "runway"}};
  std::vector<std::pair<std::string, Tensor>> opt_tensors;
  const auto params = model_->named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    opt_tensors.emplace_back("m." + params[i].name, optimizer_->first_moments()[i]);
    opt_tensors.emplace_back("v." + params[i].name, optimizer_->second_moments()[i]);
  }
  write_safetensors(out_dir_ + "/optimizer.safetensors", opt_tensors, meta);
  const Generator::State st = data_gen_.state();
  uint64_t spare_bits = 0;
  std::memcpy(&spare_bits, &st.spare, sizeof(double));
  json state{{"step", step_},
             {"data_rng", {u64_hex(st.s[0]), u64_hex(st.s[1]), u64_hex(st.s[2]), u64_hex(st.s[3])}},
             {"data_rng_has_spare", st.has_spare},
             {"data_rng_spare_bits", u64_hex(spare_bits)}};
  write_text_file_atomic(out_dir_ + "/state.json", state.dump(2) + "\n");
  std::vector<std::pair<std::string, Tensor>> model_tensors;
  for (const auto& p : params) model_tensors.emplace_back(p.name, p.tensor);
  write_safetensors(out_dir_ + "/model.safetensors", model_tensors, meta);
}

double Trainer::validation_loss(int64_t batches, int64_t T) const {
  NoGradGuard no_grad;
  WindowSampler val(data_->corpus.val, T);
  Generator gen(0xba11);  // the same windows at every evaluation
  std::vector<int64_t> inputs, targets;
  double total = 0;
  for (int64_t b = 0; b < batches; ++b) {
    val.next_batch(config_.batch_size, gen, &inputs, &targets);
    total += model_->loss(Tensor::from_indices(inputs, {config_.batch_size, T}).to(device_),
                          Tensor::from_indices(targets, {config_.batch_size, T}).to(device_))
                 .item();
  }
  return total / static_cast<double>(batches);
}

int64_t Trainer::run(const std::function<void(const StepReport&)>& on_step, const std::atomic<bool>* stop) {
  const int64_t B = config_.batch_size, T = config_.model.seq_len;
  std::vector<int64_t> inputs, targets;
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  std::ofstream metrics(out_dir_ + "/metrics.jsonl", std::ios::app);
  while (step_ < config_.steps && !(stop && stop->load())) {
    const auto t0 = std::chrono::steady_clock::now();
    optimizer_->zero_grad();
    double step_loss = 0;
    for (int64_t micro = 0; micro < config_.grad_accum; ++micro) {
      data_->sampler->next_batch(B, data_gen_, &inputs, &targets);
      if (config_.mix_passkey > 0) mix_passkey(inputs, targets, B, T, config_.mix_passkey, data_gen_);
      if (config_.mix_recall > 0)
        mix_recall(inputs, targets, B, T, config_.mix_recall, config_.recall_pairs, config_.recall_queries, data_gen_);
      Tensor loss = model_->loss(Tensor::from_indices(inputs, {B, T}).to(device_),
                                 Tensor::from_indices(targets, {B, T}).to(device_));
      mul_scalar(loss, 1.0 / static_cast<double>(config_.grad_accum)).backward();
      step_loss += loss.item() / static_cast<double>(config_.grad_accum);
    }
    StepReport r;
    r.grad_norm = global_grad_norm(model_->named_parameters());
    r.lr = learning_rate(step_, config_.steps, config_.warmup, config_.lr, config_.min_lr_ratio);
    optimizer_->step(r.lr, clip_scale(r.grad_norm, config_.grad_clip));
    ++step_;
    const auto t1 = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(t1 - start).count();
    r.step = step_;
    r.loss = step_loss;
    r.tokens_per_second = static_cast<double>(B * T * config_.grad_accum) / std::chrono::duration<double>(t1 - t0).count();
    r.seconds_left = elapsed / static_cast<double>(step_ - first_step) * static_cast<double>(config_.steps - step_);
    if (step_ % config_.eval_every == 0 || step_ == config_.steps) {
      r.evaluated = true;
      r.val_loss = validation_loss(config_.eval_batches, T);
    }
    json line{{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
              {"tokens_per_second", r.tokens_per_second}};
    if (r.evaluated) line["val_loss"] = r.val_loss;
    metrics << line.dump() << "\n" << std::flush;
    if (on_step) on_step(r);
  }
  save_checkpoint();
  return step_;
}

std::unique_ptr<GPT> load_model(const std::string& dir, TrainConfig* config_out) {
  return load_model(dir, Device::CPU, config_out);
}

std::unique_ptr<GPT> load_model(const std::string& dir, Device device, TrainConfig* config_out) {
  require_device(device);
  TrainConfig config;
  config.update_from_json(read_json_file(dir + "/config.json"), dir + "/config.json");
  config.model.validate();
  Generator init(config.seed);
  auto model = std::make_unique<GPT>(config.model, init);
  const std::string path = dir + "/model.safetensors";
  load_into(model->named_parameters(), read_safetensors(path), "", path);
  model->to(device);
  if (config_out) *config_out = config;
  return model;
}

}  // namespace runway::nn
