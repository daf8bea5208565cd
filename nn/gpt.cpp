#include "nn/gpt.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace runway::nn {

PositionEncoding parse_position_encoding(const std::string& name) {
  if (name == "rope") return PositionEncoding::Rope;
  if (name == "none") return PositionEncoding::None;
  if (name == "learned") return PositionEncoding::Learned;
  if (name == "alibi") return PositionEncoding::Alibi;
  throw Error(fmt::format("pos: unknown positional encoding '{}': allowed values are rope, none, learned, alibi", name));
}

const char* position_encoding_name(PositionEncoding p) {
  switch (p) {
    case PositionEncoding::Rope: return "rope";
    case PositionEncoding::None: return "none";
    case PositionEncoding::Learned: return "learned";
    case PositionEncoding::Alibi: return "alibi";
  }
  return "?";
}

GPTConfig::GPTConfig() = default;

void GPTConfig::validate() const {
  auto positive = [](const char* field, int64_t v) {
    if (v <= 0) throw Error(fmt::format("{} must be a positive integer, got {}", field, v));
  };
  positive("vocab_size", vocab_size);
  positive("n_layer", n_layer);
  positive("n_head", n_head);
  positive("n_embd", n_embd);
  positive("seq_len", seq_len);
  if (n_embd % n_head != 0)
    throw Error(fmt::format("n_head {} does not divide n_embd {}: choose n_head among the divisors of n_embd", n_head, n_embd));
  if (pos == PositionEncoding::Rope && (n_embd / n_head) % 2 != 0)
    throw Error(fmt::format("pos rope needs an even head width, but n_embd / n_head = {}", n_embd / n_head));
  if (rewired) {
    if (runway.runway_head < 0 || runway.runway_head >= n_head)
      throw Error(fmt::format("runway_head {} is out of range: allowed 0..{} (n_head = {})", runway.runway_head, n_head - 1, n_head));
    if (!std::isfinite(runway.beta)) throw Error(fmt::format("runway_beta must be a finite number, got {}", runway.beta));
    for (int64_t l : rewired_layers)
      if (l < 0 || l >= n_layer)
        throw Error(fmt::format("rewired_layers contains {}: allowed 0..{} (n_layer = {})", l, n_layer - 1, n_layer));
  }
  if (!(rope_base > 0)) throw Error(fmt::format("rope_base must be > 0, got {}", rope_base));
}

bool GPTConfig::layer_is_rewired(int64_t layer) const {
  if (!rewired) return false;
  return rewired_layers.empty() || std::find(rewired_layers.begin(), rewired_layers.end(), layer) != rewired_layers.end();
}

// ---- layers ---------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, double init_std, Generator& gen, DType dt) {
  weight = add_parameter("weight", Tensor::normal({in, out}, 0.0, init_std, gen, dt), true);
  bias = add_parameter("bias", Tensor::zeros({out}, dt), false);
}

Tensor Linear::forward(const Tensor& x) const { return linear(x, weight, bias); }  // x @ W + b, one op

Embedding::Embedding(int64_t rows, int64_t width, double init_std, Generator& gen, DType dt) {
  weight = add_parameter("weight", Tensor::normal({rows, width}, 0.0, init_std, gen, dt), false);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight, ids); }

LayerNorm::LayerNorm(int64_t width, DType dt) {
  weight = add_parameter("weight", Tensor::ones({width}, dt), false);
  bias = add_parameter("bias", Tensor::zeros({width}, dt), false);
}

Tensor LayerNorm::forward(const Tensor& x) const { return layernorm(x, weight, bias, 1e-5); }

MLP::MLP(int64_t width, double init_std, double proj_std, Generator& gen, DType dt) {
  fc = add_module("fc", std::make_shared<Linear>(width, 4 * width, init_std, gen, dt));
  proj = add_module("proj", std::make_shared<Linear>(4 * width, width, proj_std, gen, dt));
}

Tensor MLP::forward(const Tensor& x) const { return proj->forward(gelu(fc->forward(x))); }

CausalSelfAttention::CausalSelfAttention(const GPTConfig& c, bool is_rewired, double init_std, double proj_std,
                                         Generator& gen, DType dt)
    : config(c), rewired(is_rewired) {
  qkv = add_module("qkv", std::make_shared<Linear>(c.n_embd, 3 * c.n_embd, init_std, gen, dt));
  proj = add_module("proj", std::make_shared<Linear>(c.n_embd, c.n_embd, proj_std, gen, dt));
}

AttentionOptions CausalSelfAttention::attention_options() const {
  AttentionOptions o = rewired ? AttentionOptions::rewired_with(config.runway) : AttentionOptions::standard();
  if (config.pos == PositionEncoding::Rope) o.rope_base = config.rope_base;
  o.alibi = config.pos == PositionEncoding::Alibi;
  o.impl = config.attention_impl;
  return o;
}

Tensor CausalSelfAttention::forward(const Tensor& x, AttentionTrace* trace) const {
  // Training, evaluation and inspection: one op from the packed projection to the merged
  // heads (no split, permute or merge copies); `trace` receives P, R, A, A'.
  return proj->forward(causal_attention(AttentionInputs::packed(qkv->forward(x), config.n_head),
                                        attention_options(), trace ? &trace->maps : nullptr));
}

Block::Block(const GPTConfig& c, int64_t layer, Generator& gen, DType dt) {
  const double std_init = 0.02, proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layer));
  ln_1 = add_module("ln_1", std::make_shared<LayerNorm>(c.n_embd, dt));
  attn = add_module("attn", std::make_shared<CausalSelfAttention>(c, c.layer_is_rewired(layer), std_init, proj_std, gen, dt));
  ln_2 = add_module("ln_2", std::make_shared<LayerNorm>(c.n_embd, dt));
  mlp = add_module("mlp", std::make_shared<MLP>(c.n_embd, std_init, proj_std, gen, dt));
}

Tensor Block::forward(const Tensor& x, AttentionTrace* trace) const {
  Tensor h = add(x, attn->forward(ln_1->forward(x), trace));
  return add(h, mlp->forward(ln_2->forward(h)));
}

// ---- GPT ---------------------------------------------------------------------------

GPT::GPT(const GPTConfig& c, Generator& gen, DType dt) : config(c) {
  config.validate();
  token_embedding = add_module("wte", std::make_shared<Embedding>(c.vocab_size, c.n_embd, 0.02, gen, dt));
  wte = token_embedding->weight;
  if (c.pos == PositionEncoding::Learned) {
    position_embedding = add_module("wpe", std::make_shared<Embedding>(c.seq_len, c.n_embd, 0.02, gen, dt));
    wpe = position_embedding->weight;
  }
  for (int64_t l = 0; l < c.n_layer; ++l)
    blocks.push_back(add_module(fmt::format("blocks.{}", l), std::make_shared<Block>(c, l, gen, dt)));
  ln_f = add_module("ln_f", std::make_shared<LayerNorm>(c.n_embd, dt));
}

Tensor GPT::forward(const Tensor& ids, std::vector<AttentionTrace>* traces) const {
  if (ids.dtype() != DType::Int64 || ids.dim() != 2)
    throw Error(fmt::format("GPT forward: ids must be int64 (B, T), got {} {}", dtype_name(ids.dtype()), ids.shape_str()));
  const int64_t T = ids.size(1);
  if (config.pos == PositionEncoding::Learned && T > config.seq_len)
    throw Error(fmt::format("GPT forward: T = {} exceeds the {} learned positions (seq_len); "
                            "learned positions cannot extrapolate", T, config.seq_len));
  Tensor x = token_embedding->forward(ids);
  if (config.pos == PositionEncoding::Learned) x = add(x, slice(wpe, 0, 0, T));
  if (traces) traces->assign(blocks.size(), AttentionTrace{});
  for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward(x, traces ? &(*traces)[l] : nullptr);
  return matmul(ln_f->forward(x), transpose(wte, 0, 1));  // tied output embedding
}

void GPT::set_attention_impl(AttentionImpl impl) {
  config.attention_impl = impl;
  for (auto& block : blocks) block->attn->config.attention_impl = impl;
}

Tensor GPT::loss(const Tensor& ids, const Tensor& targets) const {
  return cross_entropy(forward(ids), targets);
}

}  // namespace runway::nn
