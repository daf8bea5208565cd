// Internal to the CPU backend: the helpers its kernels share, whichever op family's
// file (engine/ops/*.cpp, engine/cpu_backend.cpp) defines them. Not part of the engine's
// public interface.
#pragma once

#include <fmt/format.h>

#include <cstdint>

#include "engine/backend.h"
#include "engine/tensor.h"  // Error, shape_numel

namespace runway::cpu {

// Calls f(T{}) with T the C++ type of a float dtype; throws for the others.
template <typename F>
void dispatch_float(DType dt, const char* kernel, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    default:
      throw Error(fmt::format("{}: dtype {} is not supported (float32 or float64 only)", kernel,
                              dtype_name(dt)));
  }
}

// Calls f(T{}) with T the C++ type of any dtype.
template <typename F>
void dispatch_any(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Int64: f(int64_t{}); return;
  }
}

// Calls body(out_index, a_offset, b_offset, inner_count, a_inner_stride, b_inner_stride)
// for each run along the innermost dimension of a broadcast plan.
template <typename Body>
void for_each_run(const BroadcastPlan& plan, Body&& body) {
  const Shape& shape = plan.out_shape;
  const int64_t rank = static_cast<int64_t>(shape.size());
  const int64_t total = shape_numel(shape);
  if (total == 0) return;
  if (rank == 0) {
    body(0, 0, 0, 1, 0, 0);
    return;
  }
  const int64_t inner = shape[rank - 1];
  const int64_t outer = total / inner;
  const int64_t as = plan.a_strides[rank - 1], bs = plan.b_strides[rank - 1];
#pragma omp parallel for if (total > 1 << 16) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    int64_t rem = o, aoff = 0, boff = 0;
    for (int64_t d = rank - 2; d >= 0; --d) {
      const int64_t idx = rem % shape[d];
      rem /= shape[d];
      aoff += idx * plan.a_strides[d];
      boff += idx * plan.b_strides[d];
    }
    body(o * inner, aoff, boff, inner, as, bs);
  }
}

}  // namespace runway::cpu
