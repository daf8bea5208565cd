// Whole-model CPU-vs-CUDA parity: the models, batches, training recipe and tolerances
// shared by tests/cuda/test_cuda_model.cpp (the parity itself, on a GPU) and
// tests/test_device.cpp (which measures, on the CPU, the float32 rounding error these
// tolerances must cover). Header only; needs runway_nn.
//
// ---- Tolerances -----------------------------------------------------------------------
//
// The quantity compared is a tensor's scaled difference
//
//     scaled_diff(x, ref) = max_i |x_i - ref_i| / max_i |ref_i|
//
// (the infinity-norm relative error). Per element relative checks do not work for a
// whole model: a parameter gradient is a sum over B*T positions and many entries are
// cancellations near zero whose relative error is meaningless; what a kernel bug does
// (a wrong index, a missing term) moves whole rows by O(1) of the tensor's scale, which
// this measure sees at once.
//
// Where the numbers come from.
//   * Op level: tests/cuda/test_cuda_parity.cpp holds every op, forward and backward, to
//     1e-5 + 1e-5 |cpu| in float32 (the worst float32 error of any op there is 6.8e-7).
//   * Depth: the model chains ~80 ops: per block ~15 forward (layernorm, qkv matmul,
//     split/permute, RoPE, attention, merge, proj, residual add, layernorm, fc, GELU,
//     proj, add), then ln_f, the tied output matmul and cross-entropy over 256 classes,
//     and the same again backward; weight gradients are sums over B*T = 256 rows. If
//     every op disagreed at its op-level limit (1e-5 relative) and the disagreements
//     added up along the chain, the gradients could differ by ~80 x 1e-5 = 8e-4: that
//     is the pessimistic bound, and no tolerance here is above it.
//   * Measured: the same models in float32 vs float64 on the CPU (tests/test_device.cpp
//     prints the numbers; float64 taken as exact): loss <= 4e-8, every gradient <= 7.3e-7
//     (scaled), the 10-step loss curve <= 1.1e-7. CUDA float32 and CPU float32 are each
//     about that far from exact, so they should differ by at most ~2x as much.
//
//   kLossTol  = 1e-5 (relative, loss ~5.6 nats): ~100x the measured float32 error x 2.
//   kGradTol  = 1e-4 (scaled, every parameter): ~70x the measured float32 error x 2,
//               8x under the pessimistic bound.
//   kCurveTol = 1e-4 (relative, each of the 10 AdamW steps): AdamW divides by
//               sqrt(v) + eps, so a gradient difference moves the weights by ~lr x
//               (relative difference) per step; measured, the float32 curve stays within
//               1.1e-7 of float64, ~400x under this.
// Every one is still >= 1000x below what a kernel bug does (a wrong index, a missing
// term, a wrong head or slope move the loss and gradients by O(0.1..1) of their scale).
//
// tests/test_device.cpp fails if the measured float32 error on the CPU ever exceeds a
// tenth of these, so a change that makes the model numerically worse is caught on
// machines without a GPU too.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "nn/data.h"
#include "nn/gpt.h"
#include "nn/optim.h"

namespace runway::model_parity {

constexpr double kLossTol = 1e-5;
constexpr double kGradTol = 1e-4;
constexpr double kCurveTol = 1e-4;

constexpr int64_t kLayers = 2;
constexpr int64_t kBatch = 4;
constexpr int64_t kCurveSteps = 10;
constexpr uint64_t kInitSeed = 7;

struct Variant {
  std::string name;
  nn::GPTConfig config;
};

// A small GPT (2 layers, 4 heads, width 64, T = 64, RoPE): standard, rewired with each
// runway summary, and a mixed one (ALiBi, only layer 1 rewired, beta 2, runway head 2).
inline std::vector<Variant> variants() {
  nn::GPTConfig base;
  base.n_layer = kLayers;
  base.n_head = 4;
  base.n_embd = 64;
  base.seq_len = 64;
  std::vector<Variant> out;
  out.push_back({"standard", base});
  nn::GPTConfig abs = base;
  abs.rewired = true;
  abs.runway.summary = RunwaySummary::Absorption;
  out.push_back({"rewired absorption", abs});
  nn::GPTConfig two = abs;
  two.runway.summary = RunwaySummary::TwoHop;
  out.push_back({"rewired two_hop", two});
  nn::GPTConfig mixed = abs;
  mixed.pos = nn::PositionEncoding::Alibi;
  mixed.rewired_layers = {1};
  mixed.runway.beta = 2.0;
  mixed.runway.runway_head = 2;
  out.push_back({"rewired absorption, alibi, layer 1 only, beta 2, head 2", mixed});
  return out;
}

// Text-like bytes, so the batches look like training data (repeated words, spaces).
inline std::string corpus_text() {
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += fmt::format("Entry {}: a stitch in time saves nine; {} birds in the hand.\n", i, (i * 7) % 13);
  return text;
}

// Batch `index` of a fixed sequence: (kBatch, T) ids and targets, int64 on the CPU.
inline void batch(int64_t index, int64_t T, Tensor* ids, Tensor* targets) {
  static const std::string text = corpus_text();
  nn::WindowSampler sampler(std::vector<uint8_t>(text.begin(), text.end()), T);
  Generator gen(0xba7c4 + static_cast<uint64_t>(index));
  std::vector<int64_t> in, tg;
  sampler.next_batch(kBatch, gen, &in, &tg);
  *ids = Tensor::from_indices(in, {kBatch, T});
  *targets = Tensor::from_indices(tg, {kBatch, T});
}

// Copies the values of `from` into `to` (same architecture; any dtypes and devices).
inline void copy_weights(const nn::GPT& from, nn::GPT& to) {
  const auto src = from.named_parameters();
  auto dst = to.named_parameters();
  if (src.size() != dst.size()) throw Error("copy_weights: the models have different parameters");
  for (size_t i = 0; i < src.size(); ++i)
    nn::assign(dst[i].tensor, src[i].tensor.detach().to(dst[i].tensor.dtype()).to(dst[i].tensor.device()));
}

struct StepResult {
  double loss = 0;
  std::vector<std::string> names;
  std::vector<std::vector<double>> grads;  // per parameter, on the host
};

// One forward and backward of `model` (on whatever device it is) on batch 0.
inline StepResult loss_and_grads(nn::GPT& model) {
  const Device device = model.wte.device();
  Tensor ids, targets;
  batch(0, model.config.seq_len, &ids, &targets);
  model.zero_grad();
  Tensor loss = model.loss(ids.to(device), targets.to(device));
  loss.backward();
  StepResult r;
  r.loss = loss.item();
  for (const auto& p : model.named_parameters()) {
    r.names.push_back(p.name);
    Tensor g = p.tensor.grad();
    r.grads.push_back(g.defined() ? g.to_vector() : std::vector<double>(p.tensor.numel(), 0.0));
  }
  model.zero_grad();
  return r;
}

// The training recipe of the curve: AdamW (default options), linear warmup over 3 steps
// then cosine to 0.1 x, peak lr 3e-3, clipping at global norm 1, batch s at step s.
// Returns the loss of each step (before its update). Mirrors nn::Trainer::run.
inline std::vector<double> loss_curve(nn::GPT& model, int64_t steps = kCurveSteps) {
  const Device device = model.wte.device();
  nn::AdamW opt(model.named_parameters(), nn::AdamWOptions{});
  std::vector<double> out;
  for (int64_t s = 0; s < steps; ++s) {
    Tensor ids, targets;
    batch(s, model.config.seq_len, &ids, &targets);
    opt.zero_grad();
    Tensor loss = model.loss(ids.to(device), targets.to(device));
    loss.backward();
    out.push_back(loss.item());
    const double norm = nn::global_grad_norm(model.named_parameters());
    opt.step(nn::learning_rate(s, steps, 3, 3e-3, 0.1), nn::clip_scale(norm, 1.0));
  }
  return out;
}

// max_i |x_i - ref_i| / max_i |ref_i| (0 / 0 = 0; sizes must match).
inline double scaled_diff(const std::vector<double>& x, const std::vector<double>& ref) {
  if (x.size() != ref.size()) throw Error(fmt::format("scaled_diff: {} vs {} values", x.size(), ref.size()));
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::fabs(x[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  if (diff == 0) return 0;
  return scale > 0 ? diff / scale : INFINITY;
}

inline double relative_diff(double x, double ref) { return std::fabs(x - ref) / std::max(std::fabs(ref), 1e-30); }

// A model of the variant with the shared initial weights, in `dtype` on `device`:
// always initialised in float32 on the CPU from kInitSeed, then converted, so every
// copy starts from the same numbers (float32 values are exact in float64).
inline std::unique_ptr<nn::GPT> make_model(const nn::GPTConfig& config, DType dtype, Device device) {
  Generator init(kInitSeed);
  nn::GPT f32(config, init, DType::Float32);
  Generator unused(kInitSeed);
  auto model = std::make_unique<nn::GPT>(config, unused, dtype);
  copy_weights(f32, *model);
  model->to(device);
  return model;
}

}  // namespace runway::model_parity
