// CPU kernels for causal attention (standard and runway-rewired) and RoPE, called
// by the CPU backend. Shapes and names follow engine/attention.h and docs/attention.md.
#pragma once

#include <cstdint>

#include "engine/backend.h"

namespace runway::cpu {

template <typename T>
void attention_forward(const AttentionArgs& args, const T* q, const T* k, const T* v, T* y,
                       T* attn, T* p, T* r);

template <typename T>
void attention_backward(const AttentionArgs& args, const T* q, const T* k, const T* v,
                        const T* attn, const T* p, const T* r, const T* dy, T* dq, T* dk, T* dv);

template <typename T>
void rope(const T* x, T* y, int64_t rows, int64_t seq, int64_t dim, double base,
          int64_t position_offset, bool inverse);

// Backend::qkv_to_heads (to_heads: src packed, dst heads) and Backend::heads_to_qkv
// (!to_heads: src heads, dst packed, inverse rotation), in one pass over (b, t):
// packed (B, T, 3, H, D), heads (3, B, H, T, D).
template <typename T>
void qkv_heads(const T* src, T* dst, int64_t batch, int64_t seq, int64_t n_heads, int64_t head_dim,
               double rope_base, bool to_heads);

}  // namespace runway::cpu
