// The training loop against numbers computed outside it: the learning rate each step
// applies (warmup, cosine), the first step's update from the mean gradient of its
// micro-batches (grad_accum), clipped to grad_clip, with decoupled weight decay on the
// matmul weights only, and task mixing feeding the documented batches.
//
// The expected values come from an independent computation: the batches are drawn as
// nn/train.h documents them (a WindowSampler over the training split, each micro-batch
// then mix_passkey then mix_recall, all from one data generator), the same model is
// built from the seed, and each micro-batch's gradient is taken on its own; the test
// averages them, clips and applies AdamW's first step by hand (in double).
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/random.h"
#include "nn/data.h"
#include "nn/gpt.h"
#include "nn/train.h"
#include "test_support.h"
#include "train_test_support.h"

using namespace runway;
using namespace runway::nn;
using runway::testing::TempDir;

namespace {

// About 19 KB of varied text in one file (a byte split), so runs do not depend on fortunes.
std::string write_corpus(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += fmt::format("line {} says {} and {}: the quick brown fox jumps over the lazy dog.\n", i, i * 7 % 13,
                        i % 3 == 0 ? "yes" : "no");
  runway::testing::write_bytes(dir / "corpus.txt", text);
  return dir / "corpus.txt";
}

TrainConfig small_config(const std::string& data) {
  TrainConfig c = runway::testing::tiny_train_config(data);
  c.steps = 1;
  c.warmup = 0;
  c.eval_every = 1000;
  c.eval_batches = 1;
  c.seed = 7;
  return c;
}

// docs/usage.md: "weight decay applies to the matmul weights only (not to biases,
// LayerNorm or embeddings)". The matmul weights are those of the Linear layers.
bool is_matmul_weight(const std::string& name) {
  const bool linear = name.find(".qkv.") != std::string::npos || name.find(".proj.") != std::string::npos ||
                      name.find(".fc.") != std::string::npos;
  return linear && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
}

std::vector<std::vector<double>> values_of(const GPT& model) {
  std::vector<std::vector<double>> out;
  for (const auto& p : model.named_parameters()) out.push_back(p.tensor.to_vector());
  return out;
}

struct IndependentStep {
  std::vector<std::string> names;
  std::vector<std::vector<double>> initial;  // parameters before the step
  std::vector<std::vector<double>> grad;     // mean over the micro-batches of each one's gradient
  double norm = 0;                           // global norm of `grad`
};

// The first step's gradient, computed without the trainer: the documented data stream
// (the trainer seeds its data generator with seed ^ 0x5eed5eed5eed5eed, nn/train.cpp)
// and one backward per micro-batch, averaged here in double.
IndependentStep independent_first_step(const TrainConfig& c) {
  const int64_t B = c.batch_size, T = c.model.seq_len;
  const ByteCorpus corpus = load_corpus(c.data, c.val_fraction);
  WindowSampler sampler(corpus.train, T);
  Generator data_gen(c.seed ^ 0x5eed5eed5eed5eedull);
  Generator init(c.seed);
  GPT model(c.model, init);
  IndependentStep s;
  for (const auto& p : model.named_parameters()) {
    s.names.push_back(p.name);
    s.initial.push_back(p.tensor.to_vector());
    s.grad.emplace_back(static_cast<size_t>(p.tensor.numel()), 0.0);
  }
  std::vector<int64_t> inputs, targets;
  for (int64_t micro = 0; micro < c.grad_accum; ++micro) {
    sampler.next_batch(B, data_gen, &inputs, &targets);
    if (c.mix_passkey > 0) mix_passkey(inputs, targets, B, T, c.mix_passkey, data_gen);
    if (c.mix_recall > 0) mix_recall(inputs, targets, B, T, c.mix_recall, c.recall_pairs, c.recall_queries, data_gen);
    model.zero_grad();
    model.loss(Tensor::from_indices(inputs, {B, T}), Tensor::from_indices(targets, {B, T})).backward();
    const auto params = model.named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::vector<double> g = params[i].tensor.grad().to_vector();
      for (size_t j = 0; j < g.size(); ++j) s.grad[i][j] += g[j] / static_cast<double>(c.grad_accum);
    }
  }
  double sq = 0;
  for (const auto& g : s.grad)
    for (double x : g) sq += x * x;
  s.norm = std::sqrt(sq);
  return s;
}

// Runs the trainer for its configured steps; returns the reports.
std::vector<StepReport> run_trainer(Trainer& trainer, const std::function<void(const StepReport&)>& also = {}) {
  std::vector<StepReport> reports;
  trainer.run([&](const StepReport& r) {
    reports.push_back(r);
    if (also) also(r);
  });
  return reports;
}

// One trainer step against the hand-applied AdamW first step. With lr 1 and eps 1 the
// first update lr * gs / (|gs| + eps) is nearly linear in the clipped gradient gs (not
// lr * sign(gs) as with a small eps), so the averaging, the clip scale and the decay all
// show in the parameters. `clip_fraction` > 0 sets grad_clip to that fraction of the
// gradient's norm; 0 disables clipping.
void check_first_step(TrainConfig c, double clip_fraction) {
  c.steps = 1;
  c.warmup = 0;  // step 0 then runs at the peak lr
  c.lr = 1.0;
  c.adamw.eps = 1.0;
  c.adamw.weight_decay = 0.1;
  const IndependentStep s = independent_first_step(c);
  REQUIRE(s.norm > 0);
  c.grad_clip = clip_fraction > 0 ? clip_fraction * s.norm : 0.0;
  const double scale = clip_fraction > 0 ? clip_fraction : 1.0;

  TempDir dir;
  Trainer trainer(c, dir / "run", false);
  const std::vector<StepReport> reports = run_trainer(trainer);
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].lr == Approx(1.0).epsilon(1e-12));
  CHECK(reports[0].grad_norm == Approx(s.norm).epsilon(1e-5));  // reported before clipping

  const auto got = values_of(trainer.model());
  REQUIRE(got.size() == s.names.size());
  double worst = 0, moved = 0;  // largest error, and largest update, over all entries
  int64_t decayed = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool decay = is_matmul_weight(s.names[i]);
    decayed += decay;
    for (size_t j = 0; j < got[i].size(); ++j) {
      const double gs = s.grad[i][j] * scale;
      const double want = s.initial[i][j] * (decay ? 1.0 - c.lr * c.adamw.weight_decay : 1.0) -
                          c.lr * gs / (std::fabs(gs) + c.adamw.eps);
      worst = std::max(worst, std::fabs(got[i][j] - want));
      moved = std::max(moved, std::fabs(got[i][j] - s.initial[i][j]));
    }
  }
  CHECK(decayed == 4 * c.model.n_layer);  // qkv, attn.proj, fc, mlp.proj per block
  INFO("largest update " << moved << ", largest error " << worst);
  CHECK(moved > 1e-2);
  // float32 parameters of magnitude <= ~1: rounding is ~1e-7; a wrong average, a missed
  // clip or decay moves entries by 1e-4 .. 1e-2.
  CHECK(worst < 2e-6);
}

}  // namespace

TEST_CASE("the matmul weights and only they are marked for weight decay, as documented") {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.pos = PositionEncoding::Learned;  // so wpe exists too
  Generator gen(1);
  GPT model(c, gen);
  int64_t decayed = 0;
  for (const auto& p : model.named_parameters()) {
    INFO(p.name);
    CHECK(p.decay == is_matmul_weight(p.name));
    CHECK(p.decay == (p.tensor.dim() == 2 && p.name != "wte.weight" && p.name != "wpe.weight"));
    decayed += p.decay;
  }
  CHECK(decayed == 8);
}

TEST_CASE("a trainer step is the mean of its micro-batch gradients through AdamW with decoupled decay") {
  TempDir dir;
  TrainConfig c = small_config(write_corpus(dir));
  c.grad_accum = 3;
  check_first_step(c, 0.0);
}

TEST_CASE("a trainer step clips the mean gradient to grad_clip") {
  TempDir dir;
  TrainConfig c = small_config(write_corpus(dir));
  c.grad_accum = 2;
  check_first_step(c, 0.25);  // the update of a quarter of the gradient
}

TEST_CASE("a trainer step with task mixing trains on the documented mixed batches") {
  TempDir dir;
  TrainConfig c = small_config(write_corpus(dir));
  c.model.seq_len = 110;  // a passkey document needs 107 bytes
  c.batch_size = 6;
  c.grad_accum = 2;
  c.mix_passkey = 0.4;
  c.mix_recall = 0.4;
  c.recall_pairs = 6;
  c.recall_queries = 4;
  check_first_step(c, 0.0);
}

// With beta1 = beta2 = 0 and no decay, AdamW's update is lr * g / (|g| + eps): every
// entry with |g| >> eps moves by exactly the step's learning rate, so the largest move
// of a step is the learning rate the trainer applied (not only the one it reports).
// Schedule (docs/usage.md): peak 0.01, warmup 2, 6 steps, floor ratio 0.1:
//   step 0: 0.01 * 1/2, step 1: 0.01 (linear warmup)
//   step s >= 2: 0.001 + 0.009 * (1 + cos(pi * (s - 2) / 4)) / 2
TEST_CASE("the trainer applies the warmup and cosine learning rate at every step") {
  TempDir dir;
  TrainConfig c = small_config(write_corpus(dir));
  c.steps = 6;
  c.warmup = 2;
  c.lr = 0.01;
  c.min_lr_ratio = 0.1;
  c.adamw.beta1 = 0.0;
  c.adamw.beta2 = 0.0;
  c.adamw.weight_decay = 0.0;
  c.grad_clip = 0.0;
  const double half = std::sqrt(0.5);
  const std::vector<double> expected{0.005, 0.01, 0.01, 0.001 + 0.009 * (1 + half) / 2, 0.0055,
                                     0.001 + 0.009 * (1 - half) / 2};
  Trainer trainer(c, dir / "run", false);
  std::vector<std::vector<double>> before = values_of(trainer.model());
  std::vector<double> applied;
  const auto reports = run_trainer(trainer, [&](const StepReport&) {
    const auto now = values_of(trainer.model());
    double largest = 0;
    for (size_t i = 0; i < now.size(); ++i)
      for (size_t j = 0; j < now[i].size(); ++j) largest = std::max(largest, std::fabs(now[i][j] - before[i][j]));
    applied.push_back(largest);
    before = now;
  });
  REQUIRE(reports.size() == expected.size());
  for (size_t s = 0; s < expected.size(); ++s) {
    INFO("step " << s);
    CHECK(reports[s].lr == Approx(expected[s]).epsilon(1e-12));
    // float32 rounding of parameters up to ~1 is ~1e-7, 1e-4 of the smallest rate here.
    CHECK(applied[s] == Approx(expected[s]).epsilon(1e-3));
  }
}
