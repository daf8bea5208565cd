// Helpers shared by the tests that train: the smallest model worth training, and the
// per-step losses of a run.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "nn/train.h"

namespace runway::testing {

// One rewired layer of width 16 with 2 heads on 16-byte windows, batches of 4: a step
// takes milliseconds. Tests set the steps, schedule and evaluation they need.
inline nn::TrainConfig tiny_train_config(const std::string& data) {
  nn::TrainConfig c;
  c.data = data;
  c.model.n_layer = 1;
  c.model.n_head = 2;
  c.model.n_embd = 16;
  c.model.seq_len = 16;
  c.model.rewired = true;
  c.batch_size = 4;
  return c;
}

// Runs the trainer and returns each step's loss; with stop_at, stops after that step
// (as Ctrl-C would: the trainer saves a checkpoint there).
inline std::vector<double> run_losses(nn::Trainer& t, int64_t stop_at = -1) {
  std::vector<double> out;
  std::atomic<bool> stop{false};
  t.run([&](const nn::StepReport& r) {
    out.push_back(r.loss);
    if (r.step == stop_at) stop.store(true);
  }, &stop);
  return out;
}

}  // namespace runway::testing
