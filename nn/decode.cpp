#include "nn/decode.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace runway::nn {

Decoder::Decoder(const GPT& model, int64_t batch) : model_(model), batch_(batch), layers_(model.blocks.size()) {
  if (batch <= 0) throw Error(fmt::format("Decoder: batch must be positive, got {}", batch));
}

Tensor Decoder::attend(const CausalSelfAttention& attn, LayerCache& cache, const Tensor& x) {
  const GPTConfig& c = model_.config;
  const int64_t t = position_, t1 = position_ + 1, B = batch_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  Tensor q, k, v;
  attn.project(x, position_, &q, &k, &v);  // (B, H, 1, D), RoPE at this position
  cache.k = cache.k.defined() ? concat({cache.k, k}, 2) : k;
  cache.v = cache.v.defined() ? concat({cache.v, v}, 2) : v;
  // Row i = t of the logits: S[i, j] for j <= i, (B, H, 1, t1).
  Tensor s = mul_scalar(matmul(q, transpose(cache.k, -1, -2)), 1.0 / std::sqrt(static_cast<double>(c.n_embd / c.n_head)));
  if (c.pos == PositionEncoding::Alibi) {
    const auto slopes = alibi_slopes(c.n_head);
    std::vector<double> bias(c.n_head * t1);
    for (int64_t h = 0; h < c.n_head; ++h)
      for (int64_t j = 0; j < t1; ++j) bias[h * t1 + j] = -slopes[h] * static_cast<double>(t - j);
    s = add(s, Tensor::from_vector(bias, {c.n_head, 1, t1}, dt).to(dev));
  }
  if (attn.rewired) {
    const RunwayOptions& o = c.runway;
    const Tensor p = softmax(slice(s, 1, o.runway_head, o.runway_head + 1), -1);  // (B, 1, 1, t1)
    const Tensor zero = Tensor::zeros({B, 1, 1, 1}, dt, dev);
    Tensor r_row;
    if (o.summary == RunwaySummary::Absorption) {
      // R[i, j] = acc[j] (j < i), 0 at j = i; then acc[j] += P[i, j], acc[i] = 0.
      r_row = t == 0 ? zero : concat({cache.runway_state, zero}, -1);
      cache.runway_state = t == 0 ? zero : concat({add(cache.runway_state, slice(p, -1, 0, t)), zero}, -1);
    } else {
      // R[i, j] = sum_k P[i, k] L(P)[k, j] over the stored strictly-lower rows k < i.
      r_row = t == 0 ? zero : concat({matmul(slice(p, -1, 0, t), cache.runway_state), zero}, -1);
      const Tensor new_row = t == 0 ? zero : concat({slice(p, -1, 0, t), zero}, -1);  // (B, 1, 1, t1)
      cache.runway_state =
          t == 0 ? zero
                 : concat({concat({cache.runway_state, Tensor::zeros({B, 1, t, 1}, dt, dev)}, -1), new_row}, 2);
    }
    s = sub(s, mul_scalar(r_row, o.beta));
  }
  return attn.merge_heads(matmul(softmax(s, -1), cache.v));
}

Tensor Decoder::step(const Tensor& ids) {
  NoGradGuard no_grad;
  const GPTConfig& c = model_.config;
  if (ids.dtype() != DType::Int64 || ids.shape() != Shape{batch_, 1})
    throw Error(fmt::format("Decoder::step: ids must be int64 ({}, 1), got {} {}", batch_, dtype_name(ids.dtype()),
                            ids.shape_str()));
  if (c.pos == PositionEncoding::Learned && position_ >= c.seq_len)
    throw Error(fmt::format("Decoder::step: position {} is past the {} learned positions (seq_len)", position_, c.seq_len));
  Tensor x = embedding(model_.wte, ids);  // (B, 1, C)
  if (c.pos == PositionEncoding::Learned) x = add(x, slice(model_.wpe, 0, position_, position_ + 1));
  for (size_t l = 0; l < model_.blocks.size(); ++l) {
    const Block& block = *model_.blocks[l];
    Tensor h = add(x, attend(*block.attn, layers_[l], block.ln_1->forward(x)));
    x = add(h, block.mlp->forward(block.ln_2->forward(h)));
  }
  ++position_;
  return matmul(model_.ln_f->forward(x), transpose(model_.wte, 0, 1));
}

namespace {
int64_t sample_token(const std::vector<double>& logits, const SampleOptions& o, Generator& gen) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (o.temperature <= 0) return std::max_element(logits.begin(), logits.end()) - logits.begin();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t keep = o.top_k > 0 ? std::min(o.top_k, n) : n;
  std::vector<double> w(keep);
  for (int64_t i = 0; i < keep; ++i) w[i] = std::exp((logits[order[i]] - logits[order[0]]) / o.temperature);
  double u = gen.uniform01() * std::accumulate(w.begin(), w.end(), 0.0);
  for (int64_t i = 0; i < keep; ++i) {
    if (u < w[i]) return order[i];
    u -= w[i];
  }
  return order[keep - 1];
}
}  // namespace

std::string generate(const GPT& model, const std::string& prompt, int64_t tokens, const SampleOptions& options,
                     Generator& gen, const std::function<void(char)>& on_byte) {
  if (prompt.empty()) throw Error("generate: the prompt is empty; give at least one byte");
  if (tokens < 0) throw Error(fmt::format("generate: tokens must be >= 0, got {}", tokens));
  Decoder decoder(model, 1);
  const Device device = model.wte.device();  // the ids go where the model is
  Tensor logits;
  for (unsigned char ch : prompt)
    logits = decoder.step(Tensor::from_indices({static_cast<int64_t>(ch)}, {1, 1}).to(device));
  std::string out;
  for (int64_t i = 0; i < tokens; ++i) {
    const int64_t next = sample_token(logits.to_vector(), options, gen);
    out.push_back(static_cast<char>(next));
    if (on_byte) on_byte(static_cast<char>(next));
    if (i + 1 < tokens) logits = decoder.step(Tensor::from_indices({next}, {1, 1}).to(device));
  }
  return out;
}

}  // namespace runway::nn
