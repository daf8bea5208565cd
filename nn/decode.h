// Cached (incremental) decoding for a GPT: one token at a time, keys and values of
// earlier positions kept per layer, and for rewired layers the runway state of the
// spec's "Incremental decoding":
//   absorption: acc[j] = sum of P[k,j] over the rows k > j decoded so far; a new row i
//               uses R[i,j] = acc[j], then acc[j] += P[i,j];  O(T) extra per token.
//   two_hop:    the runway head's earlier probability rows are stored, and
//               R[i,j] = sum_{j<k<i} P[i,k] P[k,j] is formed from them.
// The logits equal those of a full forward pass over the same tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/random.h"
#include "nn/gpt.h"

namespace runway::nn {

class Decoder {
 public:
  Decoder(const GPT& model, int64_t batch);
  // ids int64 (B, 1) on the model's device: the next token of each sequence -> logits
  // (B, 1, vocab). The cache lives on the model's device.
  Tensor step(const Tensor& ids);
  int64_t position() const { return position_; }

 private:
  Tensor attend(const CausalSelfAttention& attn, AttentionCache& cache, const Tensor& x);
  const GPT& model_;
  int64_t batch_;
  int64_t position_ = 0;
  std::vector<AttentionCache> layers_;  // engine/ops/attention.h
};

struct SampleOptions {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no top-k filtering
};

// Feeds `prompt` then samples `tokens` more bytes; returns only the new bytes, and
// hands each one to `on_byte` (when given) as soon as it is sampled, so that a caller can
// print the text as it grows. Runs on the model's device (sampling itself is on the
// host, so a seed gives the same choices from the same logits on every device).
std::string generate(const GPT& model, const std::string& prompt, int64_t tokens, const SampleOptions& options,
                     Generator& gen, const std::function<void(char)>& on_byte = {});

}  // namespace runway::nn
