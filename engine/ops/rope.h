// Rotary position embedding (rotate-half), the op; engine/ops/rope.cpp has its backward,
// kernels and gradcheck rows. Included by engine/ops/attention.h.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace runway {

// Rotary position embedding on (..., T, D), D even; position t + offset.
Tensor rope(const Tensor& x, double base = 10000.0, int64_t position_offset = 0);

}  // namespace runway
