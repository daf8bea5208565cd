#include "nn/train.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <regex>
#include <cstring>
#include <map>
#include <optional>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/autograd.h"
#include "engine/file_io.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/config.h"
#include "nn/data.h"
#include "nn/distributed.h"
#include "nn/device.h"

namespace runway::nn {

namespace fs = std::filesystem;
using nlohmann::json;

// The config (TrainConfig: JSON, flags, validation) is in nn/config.cpp.

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

namespace {

// Every value finite? (Reads CPU float tensors in place; others through a copy.)
bool all_finite(const Tensor& t) {
  if (t.device() == Device::CPU && t.is_contiguous() && t.dtype() == DType::Float32) {
    const float* p = t.data<float>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  }
  if (t.device() == Device::CPU && t.is_contiguous() && t.dtype() == DType::Float64) {
    const double* p = t.data<double>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  }
  for (double v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}

// Does the folder hold a run (of this version, or the flat layout of an older one)?
bool holds_run(const fs::path& dir) {
  std::error_code ec;
  return fs::exists(dir / "config.json", ec) || fs::exists(dir / "checkpoints", ec) ||
         fs::exists(dir / "model.safetensors", ec);
}

// The entries of a folder other than the lock file.
std::vector<fs::path> entries_but_lock(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != run_lock_name()) out.push_back(e.path());
  return out;
}

}  // namespace

Trainer::Trainer(TrainConfig config, std::string out_dir, bool resume, int64_t steps_override, Device device,
                 bool overwrite, Communicator* comm)
    : config_(std::move(config)), out_dir_(std::move(out_dir)), data_gen_(0), device_(device), comm_(comm) {
  require_device(device_);  // before any file is written
  const fs::path dir(out_dir_);
  std::error_code ec;
  if (resume && overwrite)
    throw Error("resume and overwrite exclude each other: resume continues a run, overwrite replaces it");
  if (resume && writes_files()) {
    if (!fs::exists(dir / "config.json", ec))
      throw Error(fmt::format("cannot resume '{}': there is no config.json in it{}", out_dir_,
                              fs::is_directory(dir, ec) ? " (not a run folder)" : " (the folder does not exist)"));
    lock_ = std::make_unique<RunLock>(out_dir_);
    TrainConfig saved;
    saved.update_from_json(read_json_file(out_dir_ + "/config.json"), out_dir_ + "/config.json");
    config_ = saved;
    if (steps_override > 0) config_.steps = steps_override;
  }
  // Data-parallel: every rank runs rank 0's settings (compared, or adopted on resume).
  if (comm_) exchange_run_settings(resume, steps_override, overwrite);
  config_.validate();
  if (config_.batch_size % ranks() != 0)
    throw Error(fmt::format("the batch of {} rows cannot be split over {} ranks: the number of ranks must divide "
                            "--batch-size (the global batch is batch_size x grad_accum rows whatever the number of "
                            "ranks; docs/distributed.md)",
                            config_.batch_size, ranks()));
  if (!resume && writes_files()) {
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
      throw Error(fmt::format("'{}' exists and is not a folder; choose a new or empty folder for the run", out_dir_));
    fs::create_directories(dir);
    lock_ = std::make_unique<RunLock>(out_dir_);
    if (holds_run(dir)) {
      if (!overwrite) {
        const auto found = find_checkpoint(out_dir_);
        throw Error(fmt::format("'{}' already holds a run ({}); continue it with --resume, or replace it with --overwrite",
                                out_dir_, !found ? std::string("config.json, no complete checkpoint")
                                          : found->flat ? std::string("a checkpoint of an older version")
                                                        : fmt::format("checkpoint at step {}", found->step)));
      }
    } else if (!entries_but_lock(dir).empty()) {
      throw Error(fmt::format("'{}' is not empty and is not a run folder (no config.json, no checkpoints/; it holds '{}'); "
                              "choose a new or empty folder for the run",
                              out_dir_, entries_but_lock(dir).front().filename().string()));
    }
  }
  data_ = std::make_unique<Data>();
  data_->corpus = load_corpus(config_.data, config_.val_fraction);
  if (comm_) {  // every rank must read the same bytes (each machine needs the data at the same path)
    const uint64_t corpus_hash = fnv1a(data_->corpus.val.data(), data_->corpus.val.size(),
                                       fnv1a(data_->corpus.train.data(), data_->corpus.train.size()));
    uint64_t lo = 0, hi = 0;
    comm_->allreduce_min_max(corpus_hash, &lo, &hi);
    if (lo != hi)
      throw Error(fmt::format("rank {}: the training data '{}' ({} + {} bytes) differ between the ranks; every rank "
                              "(on every machine) must read the same data at the same path",
                              rank(), config_.data, data_->corpus.train.size(), data_->corpus.val.size()));
  }
  data_->sampler = std::make_unique<WindowSampler>(data_->corpus.train, config_.model.seq_len);
  Generator init(config_.seed);
  model_ = std::make_unique<GPT>(config_.model, init);
  model_->to(device_);  // before the optimizer, whose moments follow the parameters' device
  optimizer_ = std::make_unique<AdamW>(model_->named_parameters(), config_.adamw);
  data_gen_.manual_seed(config_.seed ^ 0x5eed5eed5eed5eedull);
  if (writes_files()) {
    clean_interrupted_saves(out_dir_);
    if (!resume) {
      // Replaced only now that the new run has its data and model: a failed start keeps the old run.
      if (overwrite)
        for (const fs::path& p : entries_but_lock(dir)) fs::remove_all(p);
      json c = config_.to_json();
      c["parameter_count"] = model_->parameter_count();
      write_text_file_atomic(out_dir_ + "/config.json", c.dump(2) + "\n");
      fsync_file(out_dir_ + "/config.json");
    } else {
      resume_from_checkpoint();
    }
  }
  if (comm_) broadcast_state();
}

void Trainer::resume_from_checkpoint() {
  std::vector<std::string> skipped;
  const std::optional<CheckpointLocation> found = find_checkpoint(out_dir_, &skipped);
  for (const std::string& s : skipped) fmt::print(stderr, "runway: warning: '{}': skipping {}\n", out_dir_, s);
  if (!found) {
    if (!skipped.empty()) require_checkpoint(out_dir_);  // throws, naming every problem
    // Stopped before its first save: step 0 is the seed's initial state, exactly.
    truncate_metrics(out_dir_ + "/metrics.jsonl", 0);
    return;
  }
  // state.json, optimizer.safetensors and model.safetensors must agree on the step.
  const std::string ckpt = found->dir;
  const std::string state_path = ckpt + "/state.json";
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
  if (!found->flat && step_ != found->step)
    throw Error(fmt::format("checkpoint '{}' is inconsistent: state.json is at step {}, the folder is of step {}", ckpt,
                            step_, found->step));
  const std::string model_path = ckpt + "/model.safetensors", opt_path = ckpt + "/optimizer.safetensors";
  const SafetensorsFile model_file = read_safetensors(model_path);
  const SafetensorsFile opt_file = read_safetensors(opt_path);
  for (const auto* f : {&model_file, &opt_file}) {
    auto it = f->metadata.find("step");
    if (it == f->metadata.end() || it->second != std::to_string(step_))
      throw Error(fmt::format("checkpoint in '{}' is inconsistent: state.json is at step {} but {} says {}; "
                              "the save was interrupted, restore a complete checkpoint",
                              ckpt, step_, f == &model_file ? "model.safetensors" : "optimizer.safetensors",
                              it == f->metadata.end() ? "nothing" : it->second));
  }
  load_into(model_->named_parameters(), model_file, "", model_path);
  load_into(model_->named_parameters(), opt_file, "m.", opt_path, &optimizer_->first_moments());
  load_into(model_->named_parameters(), opt_file, "v.", opt_path, &optimizer_->second_moments());
  optimizer_->set_steps_taken(step_);
  last_saved_step_ = step_;
  truncate_metrics(out_dir_ + "/metrics.jsonl", step_);
}

// ---- data parallelism (nn/distributed.h, docs/distributed.md) -------------------------

int Trainer::rank() const { return comm_ ? comm_->rank() : 0; }
int Trainer::ranks() const { return comm_ ? comm_->size() : 1; }

namespace {

// The first key whose value differs between two JSON objects, "" when none does.
std::string first_difference(const json& mine, const json& root, const std::string& prefix = "") {
  for (const auto& [key, value] : root.items()) {
    if (!mine.contains(key)) return prefix + key;
    if (value.is_object() && mine[key].is_object()) {
      const std::string inner = first_difference(mine[key], value, prefix + key + ".");
      if (!inner.empty()) return inner;
    } else if (mine[key] != value) {
      return prefix + key;
    }
  }
  for (const auto& [key, value] : mine.items())
    if (!root.contains(key)) return prefix + key;
  return "";
}

}  // namespace

void Trainer::exchange_run_settings(bool resume, int64_t steps_override, bool overwrite) {
  // What each rank was asked to do. On resume only rank 0 read the saved config: the
  // others adopt it, and compare the rest.
  json mine{{"resume", resume}, {"steps_override", steps_override}, {"overwrite", overwrite},
            {"device", device_name(device_)}, {"out", out_dir_}, {"ranks", ranks()}};
  if (!resume) mine["config"] = config_.to_json();
  json sent = mine;
  if (resume && rank() == 0) sent["saved_config"] = config_.to_json();
  const json root = json::parse(broadcast_string(*comm_, sent.dump()));
  if (resume) {
    config_ = TrainConfig();
    config_.update_from_json(root.at("saved_config"), "rank 0's saved config");
  }
  json compared = root;
  compared.erase("saved_config");
  const std::string key = first_difference(mine, compared);
  if (!key.empty()) {
    const json::json_pointer where("/" + std::regex_replace(key, std::regex("\\."), "/"));
    throw Error(fmt::format("rank {} was started with other settings than rank 0: '{}' is {} here and {} on rank 0; "
                            "every rank must get the same command line (refused before training)",
                            rank(), key, mine.contains(where) ? mine[where].dump() : "absent",
                            compared.contains(where) ? compared[where].dump() : "absent"));
  }
}

void Trainer::broadcast_state() {
  int64_t step = step_;
  comm_->broadcast(&step, sizeof(step), 0);
  step_ = step;
  Generator::State st = data_gen_.state();
  comm_->broadcast(&st, sizeof(st), 0);
  data_gen_.set_state(st);
  const auto params = model_->named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor p = params[i].tensor;
    broadcast_tensor(*comm_, p);
    broadcast_tensor(*comm_, optimizer_->first_moments()[i]);
    broadcast_tensor(*comm_, optimizer_->second_moments()[i]);
  }
  optimizer_->set_steps_taken(step_);
  check_replicas();
}

void Trainer::reduce_gradients() {
  // One flat float32 buffer on the run's device: each gradient is copied in at its
  // offset, the buffer is summed over the ranks in one all-reduce, and copied back.
  const auto params = model_->named_parameters();
  int64_t total = 0;
  for (const auto& p : params) {
    if (p.tensor.dtype() != DType::Float32)
      throw Error(fmt::format("data-parallel training needs float32 parameters; '{}' is {}", p.name,
                              dtype_name(p.tensor.dtype())));
    total += p.tensor.numel();
  }
  if (!grad_buffer_.defined() || grad_buffer_.numel() != total)
    grad_buffer_ = Tensor::zeros({total}, DType::Float32, device_);
  std::vector<Tensor> grads(params.size());
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].tensor;
    grads[i] = p.grad();
    Tensor slot = grad_buffer_.slice(0, offset, offset + p.numel()).reshape(p.shape());
    // A parameter without a gradient (none flowed to it) contributes zeros.
    assign(slot, grads[i].defined() ? grads[i] : Tensor::zeros(p.shape(), DType::Float32, device_));
    offset += p.numel();
  }
  comm_->allreduce_sum(grad_buffer_);
  offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].tensor;
    if (grads[i].defined()) assign(grads[i], grad_buffer_.slice(0, offset, offset + p.numel()).reshape(p.shape()));
    offset += p.numel();
  }
}

void Trainer::check_replicas() const {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const auto& p : model_->named_parameters()) hash = tensor_checksum(p.tensor, hash);
  uint64_t lo = 0, hi = 0;
  comm_->allreduce_min_max(hash, &lo, &hi);
  if (lo != hi)
    throw Error(fmt::format("step {}: the parameters differ between the ranks (checksum {:016x} on rank {}; the ranks "
                            "range from {:016x} to {:016x}): the replicas diverged, stopping (nothing saved at this "
                            "step; the newest checkpoint is {})",
                            step_, hash, rank(), lo, hi,
                            newest_checkpoint_text()));
}

// Test hooks for the fault tests (tests/test_distributed.cpp): RUNWAY_FAULT_RANK=r and
// RUNWAY_FAULT_STEP=s make rank r, as it starts step s + 1, die by SIGKILL
// (RUNWAY_FAULT_KIND=kill, the default), throw an Error (throw), or change one of its
// parameters (perturb: the replica check must catch it).
namespace {
void maybe_inject_fault(int rank, int64_t step, const std::vector<NamedParameter>& params) {
  const char* fault_rank = std::getenv("RUNWAY_FAULT_RANK");
  const char* fault_step = std::getenv("RUNWAY_FAULT_STEP");
  if (!fault_rank || !fault_step || std::atoi(fault_rank) != rank || std::atoll(fault_step) != step) return;
  const char* kind_env = std::getenv("RUNWAY_FAULT_KIND");
  const std::string kind = kind_env ? kind_env : "kill";
  if (kind == "kill") std::raise(SIGKILL);
  if (kind == "throw") throw Error(fmt::format("rank {}: injected fault at step {} (RUNWAY_FAULT_KIND=throw)", rank, step + 1));
  if (kind == "perturb") {
    Tensor p = params.front().tensor;
    assign(p, add_scalar(p.detach(), 1e-3));
  }
}
}  // namespace

void Trainer::save_checkpoint() const {
  if (!writes_files()) return;  // rank 0 of a data-parallel run writes for all
  // A diverged state is never written over a good one.
  const auto params = model_->named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    const char* what = !all_finite(params[i].tensor)                   ? "parameter"
                       : !all_finite(optimizer_->first_moments()[i])  ? "AdamW first moment of parameter"
                       : !all_finite(optimizer_->second_moments()[i]) ? "AdamW second moment of parameter"
                                                                       : nullptr;
    if (what)
      throw Error(fmt::format("not saving the checkpoint of step {} in '{}': the {} '{}' holds a value that is not "
                              "finite (the run diverged); the newest checkpoint on disk is {}",
                              step_, out_dir_, what, params[i].name,
                              newest_checkpoint_text()));
  }
  const std::map<std::string, std::string> meta{{"step", std::to_string(step_)}, {"format", "runway"}};
  const Generator::State st = data_gen_.state();
  uint64_t spare_bits = 0;
  std::memcpy(&spare_bits, &st.spare, sizeof(double));
  const json state{{"step", step_},
                   {"data_rng", {u64_hex(st.s[0]), u64_hex(st.s[1]), u64_hex(st.s[2]), u64_hex(st.s[3])}},
                   {"data_rng_has_spare", st.has_spare},
                   {"data_rng_spare_bits", u64_hex(spare_bits)}};
  std::vector<CheckpointFile> files;
  files.push_back({"model.safetensors", [&](const std::string& path) {
                     std::vector<std::pair<std::string, Tensor>> tensors;
                     for (const auto& p : params) tensors.emplace_back(p.name, p.tensor);
                     write_safetensors(path, tensors, meta);
                   }});
  files.push_back({"optimizer.safetensors", [&](const std::string& path) {
                     std::vector<std::pair<std::string, Tensor>> tensors;
                     for (size_t i = 0; i < params.size(); ++i) {
                       tensors.emplace_back("m." + params[i].name, optimizer_->first_moments()[i]);
                       tensors.emplace_back("v." + params[i].name, optimizer_->second_moments()[i]);
                     }
                     write_safetensors(path, tensors, meta);
                   }});
  files.push_back({"state.json", [&](const std::string& path) { write_text_file_atomic(path, state.dump(2) + "\n"); }});
  // The metrics of the steps up to this one reach the disk before the checkpoint that
  // vouches for them.
  const std::string metrics = out_dir_ + "/metrics.jsonl";
  std::error_code ec;
  if (fs::exists(metrics, ec)) fsync_file(metrics);
  commit_checkpoint(out_dir_, step_, files);
  last_saved_step_ = step_;
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

std::string Trainer::newest_checkpoint_text() const {
  return last_saved_step_ >= 0 ? fmt::format("step {}", last_saved_step_) : std::string("none");
}

double Trainer::accumulate_gradients() {
  const int64_t B = config_.batch_size, T = config_.model.seq_len;
  // Data parallel: this rank's rows of every global micro-batch of B rows, and the
  // factor that turns its rows' mean loss into its share of the global mean: the global
  // mean over B rows is the mean of the N equal shares' means, and over the micro-batches
  // the mean of their means, so each share's loss is scaled by 1 / (N x grad_accum) and
  // the gradients are summed over the ranks.
  const int64_t N = ranks(), local_B = B / N, first_row = rank() * local_B;
  const double share = 1.0 / static_cast<double>(config_.grad_accum * N);
  std::vector<int64_t> inputs, targets;
  double step_loss = 0;
  for (int64_t micro = 0; micro < config_.grad_accum; ++micro) {
    // The whole global micro-batch, drawn (and mixed) the same way on every rank.
    data_->sampler->next_batch(B, data_gen_, &inputs, &targets);
    if (config_.mix_passkey > 0) mix_passkey(inputs, targets, B, T, config_.mix_passkey, data_gen_);
    if (config_.mix_recall > 0)
      mix_recall(inputs, targets, B, T, config_.mix_recall, config_.recall_pairs, config_.recall_queries, data_gen_);
    if (N > 1) {  // keep this rank's rows
      inputs.assign(inputs.begin() + first_row * T, inputs.begin() + (first_row + local_B) * T);
      targets.assign(targets.begin() + first_row * T, targets.begin() + (first_row + local_B) * T);
    }
    Tensor loss = model_->loss(Tensor::from_indices(inputs, {local_B, T}).to(device_),
                               Tensor::from_indices(targets, {local_B, T}).to(device_));
    mul_scalar(loss, share).backward();
    step_loss += loss.item() / static_cast<double>(config_.grad_accum * N);  // = x share, rounded as before
  }
  return step_loss;
}

void Trainer::stop_if_diverged(double step_loss, double grad_norm) const {
  if (std::isfinite(step_loss) && std::isfinite(grad_norm)) return;
  // Stop before the update: the parameters in memory are still those of step_.
  std::string culprit = "every gradient is finite: the loss itself overflowed";
  for (const auto& p : model_->named_parameters()) {
    const Tensor g = p.tensor.grad();
    if (g.defined() && !all_finite(g)) {
      culprit = fmt::format("the first parameter whose gradient is not finite is '{}'", p.name);
      break;
    }
  }
  throw Error(fmt::format(
      "step {}: the training loss is {} and the gradient norm is {}: not finite, the run diverged ({}). Stopped "
      "before the update and saved nothing; the newest checkpoint in '{}' is {}. Lower --lr, lengthen --warmup "
      "or clip harder (--grad-clip) and train again",
      step_ + 1, step_loss, grad_norm, culprit, out_dir_, newest_checkpoint_text()));
}

void Trainer::append_metrics(std::ofstream& metrics, const std::string& path, const StepReport& r) const {
  json line{{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
            {"tokens_per_second", r.tokens_per_second}};
  if (r.evaluated) line["val_loss"] = r.val_loss;
  if (comm_) {
    line["ranks"] = ranks();
    line["allreduce_seconds"] = r.allreduce_seconds;
  }
  metrics << line.dump() << "\n" << std::flush;
  if (!metrics) throw Error(fmt::format("cannot append to '{}' (disk full?)", path));
}

int64_t Trainer::run(const std::function<void(const StepReport&)>& on_step, const std::atomic<bool>* stop) {
  const int64_t T = config_.model.seq_len;
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  const std::string metrics_path = out_dir_ + "/metrics.jsonl";
  std::ofstream metrics;
  if (writes_files()) metrics.open(metrics_path, std::ios::app);
  auto last_save = start;
  // Single process: the stop flag itself. Data parallel: the ranks' agreement on it,
  // reached in every step's all-reduce, so that all stop after the same step.
  bool stop_agreed = false;
  const auto stopping = [&] { return comm_ ? stop_agreed : (stop && stop->load()); };
  while (step_ < config_.steps && !stopping()) {
    if (comm_) maybe_inject_fault(rank(), step_, model_->named_parameters());
    const auto t0 = std::chrono::steady_clock::now();
    optimizer_->zero_grad();
    double step_loss = accumulate_gradients();
    StepReport r;
    if (comm_) {
      const auto a0 = std::chrono::steady_clock::now();
      reduce_gradients();
      r.allreduce_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - a0).count();
      double shared[2] = {step_loss, stop && stop->load() ? 1.0 : 0.0};  // the global loss; anyone stopping?
      comm_->allreduce_sum(shared, 2);
      step_loss = shared[0];
      stop_agreed = shared[1] > 0;
    }
    r.grad_norm = global_grad_norm(model_->named_parameters());
    stop_if_diverged(step_loss, r.grad_norm);
    r.lr = learning_rate(step_, config_.steps, config_.warmup, config_.lr, config_.min_lr_ratio);
    optimizer_->step(r.lr, clip_scale(r.grad_norm, config_.grad_clip));
    ++step_;
    const auto t1 = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(t1 - start).count();
    r.step = step_;
    r.loss = step_loss;
    r.tokens_per_second = static_cast<double>(config_.batch_size * T * config_.grad_accum) /
                          std::chrono::duration<double>(t1 - t0).count();
    r.seconds_left = elapsed / static_cast<double>(step_ - first_step) * static_cast<double>(config_.steps - step_);
    if (writes_files() && (step_ % config_.eval_every == 0 || step_ == config_.steps)) {  // rank 0 validates
      r.evaluated = true;
      r.val_loss = validation_loss(config_.eval_batches, T);
      if (!std::isfinite(r.val_loss))
        throw Error(fmt::format("step {}: the validation loss is {}: not finite, the run diverged (its weights overflow). "
                                "Stopped without saving this step; the newest checkpoint in '{}' is {}. Lower --lr, "
                                "lengthen --warmup or clip harder (--grad-clip) and train again",
                                step_, r.val_loss, out_dir_, newest_checkpoint_text()));
    }
    // The replicas must hold the same parameters: checked every kReplicaCheckEvery steps,
    // at the last one and before a stop's save.
    if (comm_ && (step_ % kReplicaCheckEvery == 0 || step_ == config_.steps || stopping())) check_replicas();
    if (writes_files()) append_metrics(metrics, metrics_path, r);
    // Periodic saves (rank 0), after the step's metrics line (a checkpoint never runs ahead
    // of its log); the last step and a stop get the save below.
    if (writes_files() && step_ < config_.steps && !stopping()) {
      const double since_save = std::chrono::duration<double>(t1 - last_save).count();
      if ((save_schedule_.every_steps > 0 && step_ % save_schedule_.every_steps == 0) ||
          (save_schedule_.every_seconds > 0 && since_save >= save_schedule_.every_seconds)) {
        save_checkpoint();
        last_save = std::chrono::steady_clock::now();
        r.checkpointed = true;
      }
    }
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
  const std::string path = require_checkpoint(dir).dir + "/model.safetensors";
  const SafetensorsFile weights = read_safetensors(path);
  // Before the model is allocated: config.json must describe the tensors the file holds.
  // A damaged or hand-edited config could otherwise ask for more memory than the machine
  // has (found by fuzz/fuzz_checkpoint: std::bad_alloc, or the OOM killer).
  uint64_t stored = 0;
  for (const auto& [name, t] : weights.tensors) stored += static_cast<uint64_t>(t.numel());
  const uint64_t described = model_parameter_count(config.model);
  if (stored != described)
    throw Error(fmt::format("checkpoint '{}': config.json describes a model of {} parameters but '{}' holds {} "
                            "values; the two files do not belong together",
                            dir, described, path, stored));
  Generator init(config.seed);
  auto model = std::make_unique<GPT>(config.model, init);
  load_into(model->named_parameters(), weights, "", path);
  for (const auto& p : model->named_parameters())
    if (!all_finite(p.tensor))
      throw Error(fmt::format("checkpoint '{}': parameter '{}' holds a value that is not finite (the weights of a "
                              "diverged run); there is nothing meaningful to load",
                              path, p.name));
  model->to(device);
  if (config_out) *config_out = config;
  return model;
}

}  // namespace runway::nn
