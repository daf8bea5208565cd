// Training a byte-level GPT: configuration (flags and JSON), the training loop
// (AdamW, warmup + cosine, clipping, accumulation), periodic validation, metrics,
// and checkpoints that resume bit for bit.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/random.h"
#include "nn/gpt.h"
#include "nn/optim.h"

namespace runway::nn {

struct TrainConfig {
  TrainConfig();  // out of line, as GPTConfig
  GPTConfig model;
  std::string data = "/usr/share/games/fortunes";
  double val_fraction = 0.1;
  int64_t steps = 300;
  int64_t batch_size = 16;
  int64_t grad_accum = 1;  // micro-batches per optimizer step
  int64_t warmup = 30;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  AdamWOptions adamw;
  double grad_clip = 1.0;  // max global gradient norm; <= 0 disables clipping
  double mix_passkey = 0.0;  // fraction of training rows replaced by passkey documents
  double mix_recall = 0.0;   // fraction of rows ending in an associative-recall example
  int64_t recall_pairs = 6;    // its key-value pairs ...
  int64_t recall_queries = 4;  // ... and queries (6 * (pairs + queries) + 1 <= seq_len + 1)
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t log_every = 10;
  uint64_t seed = 1;

  nlohmann::json to_json() const;
  // Applies the keys of `j` on top of this config; an unknown key or a value of the
  // wrong type is an Error naming the key (and the allowed keys).
  void update_from_json(const nlohmann::json& j, const std::string& source);
  // update_from_json with the JSON file at `path`; errors name the file (unreadable, not
  // valid JSON, a bad key or value).
  void update_from_file(const std::string& path);
  void validate() const;  // model fields and training fields, naming the field
};

struct StepReport {
  int64_t step = 0;  // optimizer steps done
  double loss = 0;   // mean training loss of this step (nats per byte)
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double seconds_left = 0;
  bool evaluated = false;
  double val_loss = 0;  // nats per byte, when evaluated
};

class Trainer {
 public:
  // Starts fresh (writing DIR/config.json) or, with resume, continues from the
  // checkpoint in out_dir: its saved config is used, except that steps_override > 0
  // replaces the total number of steps (to train longer).
  //
  // `device` is where the run computes: the model is initialised on the CPU (so a seed
  // gives the same initial weights on every device), then moved there with the AdamW
  // moments; batches are moved there each step. It is not part of the config or the
  // checkpoint (always CPU tensors in the files), so a run may resume on another
  // device. Throws runway::Error when the device is not usable (nn/device.h).
  Trainer(TrainConfig config, std::string out_dir, bool resume, int64_t steps_override = 0,
          Device device = Device::CPU);
  ~Trainer();

  // Runs until config.steps or until *stop becomes true, then saves a checkpoint.
  // Calls on_step after every optimizer step and appends each step's numbers to
  // DIR/metrics.jsonl (one JSON object per line). Returns the last step reached.
  int64_t run(const std::function<void(const StepReport&)>& on_step, const std::atomic<bool>* stop = nullptr);

  // Mean loss over `batches` validation windows of length T drawn with a fixed seed.
  double validation_loss(int64_t batches, int64_t T) const;
  void save_checkpoint() const;  // model.safetensors, optimizer.safetensors, state.json, config.json
  const GPT& model() const { return *model_; }
  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  // The validation split of the corpus this trainer loaded (config.data, val_fraction).
  const std::vector<uint8_t>& validation_bytes() const;
  Device device() const { return device_; }

 private:
  struct Data;
  TrainConfig config_;
  std::string out_dir_;
  std::unique_ptr<GPT> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<Data> data_;
  Generator data_gen_;
  int64_t step_ = 0;
  Device device_ = Device::CPU;
};

// Loads DIR/config.json (as written by Trainer) and DIR/model.safetensors into a model
// on `device` (the CPU by default; the checkpoint itself is device independent).
std::unique_ptr<GPT> load_model(const std::string& dir, TrainConfig* config_out = nullptr);
std::unique_ptr<GPT> load_model(const std::string& dir, Device device, TrainConfig* config_out = nullptr);

// "4m07s", or "1h02m" from an hour on (whole seconds, rounded down), for progress lines.
std::string format_duration(double seconds);

// Writes `text` to `path` atomically (temp file in the same folder, then rename).
void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace runway::nn
