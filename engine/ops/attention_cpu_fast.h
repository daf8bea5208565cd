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

// The CPU backend's implementations of the kernels attention_forward and
// attention_backward (engine/fused_kernel.h; the kernels are defined in
// engine/ops/attention.cpp), with the signature of Backend::attention_forward/backward.
void cpu_attention_forward(Backend&, DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                           void* y, void* attn, void* p, void* r);
void cpu_attention_backward(Backend&, DType dt, const AttentionArgs& args, const void* q, const void* k,
                            const void* v, const void* attn, const void* p, const void* dy, void* dq, void* dk,
                            void* dv);

}  // namespace runway::cpu
