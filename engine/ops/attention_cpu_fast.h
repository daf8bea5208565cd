// The tuned CPU kernels for causal attention (standard and runway-rewired), called
// by the CPU backend (engine/ops/attention_cpu_fast.cpp); the plain-loop reference they
// are held equal to is in engine/ops/attention.cpp. Shapes and names follow engine/ops/attention.h and docs/attention.md.
#pragma once

#include <cstdint>

#include "engine/backend.h"

namespace runway::cpu {

template <typename T>
void attention_forward(const AttentionArgs& args, const T* q, const T* k, const T* v, T* y,
                       T* attn, T* p, T* r);

template <typename T>
void attention_backward(const AttentionArgs& args, const T* q, const T* k, const T* v,
                        const T* attn, const T* p, const T* dy, T* dq, T* dk, T* dv);

}  // namespace runway::cpu
