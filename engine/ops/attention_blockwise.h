// Blockwise (memory-linear) causal attention: the CPU kernels are in
// engine/ops/attention_cpu_blockwise.cpp, the CUDA ones in cuda/ops/attention_blockwise.cu;
// the op chooses them through AttentionOptions::impl (engine/ops/attention.h). The
// schedule and the state each query block carries are derived in docs/attention.md
// ("Blockwise attention").
#pragma once

#include <cstdint>

namespace runway {

// Rows per query block: a block's logits are one (kBlockwiseQueryBlock x T) stripe.
constexpr int64_t kBlockwiseQueryBlock = 64;

}  // namespace runway
