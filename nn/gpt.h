// A byte-level GPT: pre-LN transformer blocks with standard or runway-rewired causal
// self-attention (../shared/spec/RUNWAY.md), tied input/output embeddings.
//
//   x      = wte[ids] (+ wpe[:T] when pos = learned)          (B, T, C)
//   block  : x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//   logits = ln_f(x) @ wte^T                                   (B, T, 256)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/ops/attention.h"
#include "engine/random.h"
#include "nn/module.h"

namespace runway::nn {

enum class PositionEncoding { Rope, None, Learned, Alibi };
PositionEncoding parse_position_encoding(const std::string& name);  // rope|none|learned|alibi
const char* position_encoding_name(PositionEncoding p);

struct GPTConfig {
  GPTConfig();  // out of line: keeps GCC 12's -Wmaybe-uninitialized quiet on temporaries
  int64_t vocab_size = 256;
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_embd = 64;
  int64_t seq_len = 64;  // training length L; learned positions have this many rows
  PositionEncoding pos = PositionEncoding::Rope;
  bool rewired = false;  // attention = rewired
  RunwayOptions runway;  // runway_head, summary, beta, detach
  std::vector<int64_t> rewired_layers;  // empty: all layers (when rewired)
  double rope_base = 10000.0;
  // Which attention kernels run (not a property of the weights: every choice computes the
  // same numbers); auto = blockwise from blockwise_auto_from() positions on.
  AttentionImpl attention_impl = AttentionImpl::Auto;

  // Throws an Error naming the field and its allowed values.
  void validate() const;
  bool layer_is_rewired(int64_t layer) const;
};

class Linear : public Module {
 public:
  // weight (in, out) ~ N(0, init_std), bias zeros.
  Linear(int64_t in, int64_t out, double init_std, Generator& gen, DType dt);
  Tensor forward(const Tensor& x) const;  // (..., in) -> (..., out)
  Tensor weight, bias;
};

class Embedding : public Module {
 public:
  // weight (rows, width) ~ N(0, init_std); not weight-decayed.
  Embedding(int64_t rows, int64_t width, double init_std, Generator& gen, DType dt);
  Tensor forward(const Tensor& ids) const;  // int64 (...) -> (..., width)
  Tensor weight;
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t width, DType dt);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
};

class MLP : public Module {
 public:
  MLP(int64_t width, double init_std, double proj_std, Generator& gen, DType dt);
  Tensor forward(const Tensor& x) const;  // fc (C -> 4C), GELU, proj (4C -> C)
  std::shared_ptr<Linear> fc, proj;
};

// Everything a causal self-attention layer computed, for inspection.
struct AttentionTrace {
  AttentionSink maps;  // p, r only when rewired; a and a_rewired always
};

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const GPTConfig& config, bool rewired, double init_std, double proj_std,
                      Generator& gen, DType dt);
  // x (B, T, C) -> (B, T, C); `trace` receives the attention maps when given.
  Tensor forward(const Tensor& x, AttentionTrace* trace = nullptr) const;
  // This layer's attention: RoPE, ALiBi, and the runway options when rewired.
  AttentionOptions attention_options() const;

  std::shared_ptr<Linear> qkv, proj;
  GPTConfig config;
  bool rewired;
};

class Block : public Module {
 public:
  Block(const GPTConfig& config, int64_t layer, Generator& gen, DType dt);
  Tensor forward(const Tensor& x, AttentionTrace* trace = nullptr) const;
  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<MLP> mlp;
};

class GPT : public Module {
 public:
  // GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by
  // 1/sqrt(2 n_layer), zero biases, unit LayerNorm weights; seeded by `gen`.
  GPT(const GPTConfig& config, Generator& gen, DType dt = DType::Float32);
  // ids int64 (B, T), T <= seq_len for learned positions -> logits (B, T, vocab).
  Tensor forward(const Tensor& ids, std::vector<AttentionTrace>* traces = nullptr) const;
  // Mean cross-entropy of next-byte prediction: targets int64 (B, T).
  Tensor loss(const Tensor& ids, const Tensor& targets) const;
  // Switches every layer to `impl` (e.g. `runway eval --attention-impl`).
  void set_attention_impl(AttentionImpl impl);

  GPTConfig config;
  std::shared_ptr<Embedding> token_embedding, position_embedding;  // "wte", "wpe" (learned only)
  Tensor wte, wpe;  // their weights: wte is also the output projection (tied)
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> ln_f;
};

}  // namespace runway::nn
