// Blockwise (memory-linear) causal attention: the CPU kernels are in
// engine/ops/attention_cpu_blockwise.cpp, the CUDA ones in cuda/ops/attention_blockwise.cu;
// the op chooses them through AttentionOptions::impl (engine/ops/attention.h). The
// schedule and the state each query block carries are derived in docs/attention.md
// ("Blockwise attention").
#pragma once

#include <cstdint>

#include "engine/backend.h"

namespace runway {

// Rows per query block: a block's logits are one (kBlockwiseQueryBlock x T) stripe.
constexpr int64_t kBlockwiseQueryBlock = 64;

// The kernels' defaults (a backend without its own blockwise kernels, or a case one
// leaves to the default): the materialised kernels with the maps in scratch for the
// duration of the call; lse, runway_lse and runway_acc are left at 0 (the default backward
// does not read them). The signatures of Backend::attention_blockwise_forward/backward.
void attention_blockwise_forward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                         const void* v, void* y, void* lse, void* runway_lse, void* runway_acc);
void attention_blockwise_backward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                          const void* v, const void* y, const void* lse, const void* runway_lse,
                                          const void* runway_acc, const void* dy, void* dq, void* dk, void* dv);

}  // namespace runway
