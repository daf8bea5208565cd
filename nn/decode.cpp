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

Tensor Decoder::attend(const CausalSelfAttention& attn, AttentionCache& cache, const Tensor& x) {
  // The new position against the cache, through the same entry point as training: RoPE
  // at the cache's length, the cached keys and values, the runway state advanced by one row.
  return attn.proj->forward(
      causal_attention(AttentionInputs::packed(attn.qkv->forward(x), model_.config.n_head, &cache), attn.attention_options()));
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
