// Training a byte-level GPT: configuration (flags and JSON), the training loop
// (AdamW, warmup + cosine, clipping, accumulation), periodic validation, metrics,
// and checkpoints that resume bit for bit.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/random.h"
#include "nn/gpt.h"
#include "nn/optim.h"

namespace runway::nn {

class RunLock;       // nn/checkpoint.h
class Communicator;  // nn/distributed.h

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

  // JSON, flags and checks come from one table of fields (nn/config.h, nn/config.cpp).
  nlohmann::json to_json() const;
  // Applies the keys of `j` on top of this config; an unknown key, a value of the wrong
  // type (a float for an integer field included), a non-finite number, an unknown name
  // or a value out of its range is an Error naming the key (and the allowed values).
  void update_from_json(const nlohmann::json& j, const std::string& source);
  // update_from_json with the JSON file at `path`; errors name the file (unreadable, not
  // valid JSON, a bad key or value).
  void update_from_file(const std::string& path);
  // Every field's range, the rules between fields and the memory estimate (a model and
  // batch that cannot fit in this machine's memory), naming the field.
  void validate() const;
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
  bool checkpointed = false;  // a periodic checkpoint of this step was saved
  double allreduce_seconds = 0;  // data-parallel runs: the step's gradient all-reduce
};

// When Trainer::run saves a checkpoint besides the one at its end: every `every_steps`
// optimizer steps and/or when `every_seconds` have passed since the last save (0 turns
// either off). Not part of the config: it does not change what is trained.
struct SaveSchedule {
  int64_t every_steps = 0;
  double every_seconds = 300;
};

class Trainer {
 public:
  // Starts fresh (writing DIR/config.json) or, with resume, continues from the newest
  // complete checkpoint in out_dir (nn/checkpoint.h; from step 0 when the run was
  // stopped before its first save): its saved config is used, except that
  // steps_override > 0 replaces the total number of steps (to train longer), and
  // DIR/metrics.jsonl is cut back to the checkpoint's step.
  //
  // The trainer owns out_dir while it lives (an flock on DIR/.lock, nn/checkpoint.h): a
  // second trainer of the same folder gets an Error naming the holder's pid. A fresh
  // start refuses a folder that holds a run (config.json or checkpoints) unless
  // `overwrite` (then the run's files are replaced), and always refuses a folder that is
  // not empty and not a run. Leftovers of an interrupted save are removed.
  //
  // `device` is where the run computes: the model is initialised on the CPU (so a seed
  // gives the same initial weights on every device), then moved there with the AdamW
  // moments; batches are moved there each step. It is not part of the config or the
  // checkpoint (always CPU tensors in the files), so a run may resume on another
  // device. Throws runway::Error when the device is not usable (nn/device.h).
  //
  // `comm` (nn/distributed.h; docs/distributed.md) makes this one rank of a data-parallel
  // run: the global batch stays config.batch_size x grad_accum rows, whatever the number
  // of ranks N (which must divide batch_size); every rank draws the whole global batch
  // with the same data RNG and keeps its own batch_size / N rows of every micro-batch;
  // the gradients are summed over the ranks in one flat buffer, so every rank applies the
  // same AdamW step. Rank 0 alone owns out_dir (lock, config.json, metrics, checkpoints,
  // validation); the others never touch it. At the start rank 0's settings are compared
  // with every rank's (a difference is an Error on that rank, before anything is written)
  // and rank 0's state (resumed or fresh) is broadcast to all.
  Trainer(TrainConfig config, std::string out_dir, bool resume, int64_t steps_override = 0,
          Device device = Device::CPU, bool overwrite = false, Communicator* comm = nullptr);
  ~Trainer();

  // Runs until config.steps or until *stop becomes true (in a data-parallel run: on any
  // rank; the ranks agree on it in every step's all-reduce and stop after the same step),
  // then saves a checkpoint; saves
  // on the way as the save schedule says. Calls on_step after every optimizer step and
  // appends each step's numbers to DIR/metrics.jsonl (one JSON object per line).
  // Returns the last step reached.
  //
  // A step whose loss or global gradient norm is not finite stops the run before the
  // optimizer update: an Error names the step, the first parameter whose gradient is
  // not finite and the newest checkpoint on disk; nothing is saved.
  int64_t run(const std::function<void(const StepReport&)>& on_step, const std::atomic<bool>* stop = nullptr);

  // Mean loss over `batches` validation windows of length T drawn with a fixed seed.
  double validation_loss(int64_t batches, int64_t T) const;
  // Saves the checkpoint of the current step (nn/checkpoint.h: a unit, crash-safe; only
  // rank 0 of a data-parallel run writes, the others return at once), after checking that every parameter and AdamW moment is finite (an Error naming the
  // first one that is not, and nothing written, otherwise).
  void save_checkpoint() const;
  void set_save_schedule(const SaveSchedule& schedule) { save_schedule_ = schedule; }
  const GPT& model() const { return *model_; }
  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  // The validation split of the corpus this trainer loaded (config.data, val_fraction).
  const std::vector<uint8_t>& validation_bytes() const;
  Device device() const { return device_; }
  // This process's rank and the number of ranks (0 and 1 without a communicator).
  int rank() const;
  int ranks() const;

  // Every this many steps (and at the last step and every stop) a data-parallel run
  // compares a checksum of every rank's parameters: a difference is an Error.
  static constexpr int64_t kReplicaCheckEvery = 10;

 private:
  bool writes_files() const { return rank() == 0; }
  void resume_from_checkpoint();  // rank 0: the newest checkpoint's state
  void exchange_run_settings(bool resume, int64_t steps_override, bool overwrite);
  void broadcast_state();        // rank 0's parameters, moments, step and data RNG to all
  void reduce_gradients();       // sum of every rank's gradients, on every rank
  void check_replicas() const;   // the parameter checksum over the ranks
  // One step's forward and backward over its grad_accum micro-batches (this rank's rows
  // of each); returns this rank's share of the step's mean loss.
  double accumulate_gradients();
  // Throws, naming the step and the first parameter whose gradient is not finite, when
  // the loss or the gradient norm is not finite (before the update: nothing is saved).
  void stop_if_diverged(double step_loss, double grad_norm) const;
  void append_metrics(std::ofstream& metrics, const std::string& path, const StepReport& r) const;
  // "step N" for the newest checkpoint on disk, or "none": for the messages of a stop.
  std::string newest_checkpoint_text() const;

  struct Data;
  TrainConfig config_;
  std::string out_dir_;
  std::unique_ptr<GPT> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<Data> data_;
  Generator data_gen_;
  int64_t step_ = 0;
  Device device_ = Device::CPU;
  std::unique_ptr<RunLock> lock_;  // out_dir's owner lock (nn/checkpoint.h)
  SaveSchedule save_schedule_;
  mutable int64_t last_saved_step_ = -1;
  Communicator* comm_ = nullptr;  // data-parallel runs only (not owned)
  Tensor grad_buffer_;            // their flat gradient buffer, on device_
};

// Loads DIR/config.json (as written by Trainer) and the model of the run's newest
// complete checkpoint (nn/checkpoint.h: checkpoints/step-N/model.safetensors, or the flat
// DIR/model.safetensors of runs written before checkpoints/ existed) into a model on
// `device` (the CPU by default; the checkpoint itself is device independent). A
// parameter that is not finite is an Error naming it (a diverged run's weights).
std::unique_ptr<GPT> load_model(const std::string& dir, TrainConfig* config_out = nullptr);
std::unique_ptr<GPT> load_model(const std::string& dir, Device device, TrainConfig* config_out = nullptr);

// "4m07s", or "1h02m" from an hour on (whole seconds, rounded down), for progress lines.
std::string format_duration(double seconds);

// Writes `text` to `path` atomically (temp file in the same folder, then rename).
void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace runway::nn
