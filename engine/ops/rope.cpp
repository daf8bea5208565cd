// Rotary position embedding (RoPE, rotate-half) and the q/k/v layout of the packed
// projection (the fused kernels qkv_to_heads / heads_to_qkv, behind the op qkv_attention):
// the differentiable rope op with its backward, its gradcheck rows, the CPU kernels, the CPU
// backend's rope, and the layout kernels' CPU implementations and defaults composed from
// primitives. The CUDA kernels: cuda/ops/attention.cu. Math: docs/attention.md (a).
//
// For each c < D/2 the pair (x[c], x[c + D/2]) at position t is rotated by
// theta = (t + offset) * base^(-2c/D):
//   y[c]       = x[c] cos(theta) - x[c + D/2] sin(theta)
//   y[c + D/2] = x[c] sin(theta) + x[c + D/2] cos(theta)
// Backward: dx = the inverse rotation of dy (a rotation's transpose is its inverse); it
// uses no saved forward quantity, only base and offset.
#include "engine/ops/rope.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/fused_kernel.h"
#include "engine/ops.h"
#include "engine/ops/op_samples.h"

namespace runway {

// ---- the op ---------------------------------------------------------------------------------

namespace {
Tensor rope_raw(const Tensor& x, double base, int64_t offset, bool inverse) {
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t seq = x.size(-2), dim = x.size(-1);
  if (x.numel())
    backend_for(x.device()).rope(x.dtype(), xc.raw_data(), y.raw_data(), x.numel() / (seq * dim), seq,
                                 dim, base, offset, inverse);
  return y;
}
}  // namespace

// The fused kernels qkv_to_heads and heads_to_qkv (engine/fused_kernel.h; layouts at
// Backend::qkv_to_heads in engine/backend.h): a default composed from the Backend primitives
// (a gather and the rope kernel) and a one-pass CPU implementation each, defined below.
// CUDA registers none: it runs the defaults.
static void qkv_to_heads_default(Backend& b, DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double);
static void cpu_qkv_to_heads(Backend&, DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double);
static const FusedKernel<DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double> qkv_to_heads_kernel(
    "qkv_to_heads", &qkv_to_heads_default, &cpu_qkv_to_heads);
static void heads_to_qkv_default(Backend& b, DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double);
static void cpu_heads_to_qkv(Backend&, DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double);
static const FusedKernel<DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double> heads_to_qkv_kernel(
    "heads_to_qkv", &heads_to_qkv_default, &cpu_heads_to_qkv);

// Backend's non-virtual shorthands for them (engine/backend.h): attention
// (engine/ops/attention.cpp) calls them.
void Backend::qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t B, int64_t T, int64_t H, int64_t D,
                           double rope_base) {
  qkv_to_heads_kernel(*this, dt, qkv, heads, B, T, H, D, rope_base);
}
void Backend::heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t B, int64_t T, int64_t H, int64_t D,
                           double rope_base) {
  heads_to_qkv_kernel(*this, dt, dheads, dqkv, B, T, H, D, rope_base);
}

static const OpName kRope = declare_op("rope");
Tensor rope(const Tensor& x, double base, int64_t position_offset) {
  if (!x.defined() || !is_floating(x.dtype()))
    throw Error("rope: input must be a float32 or float64 tensor");
  if (x.dim() < 2 || x.size(-1) % 2 != 0)
    throw Error(fmt::format("rope: input must be (..., T, D) with D even, got {}", x.shape_str()));
  if (!(base > 0)) throw Error(fmt::format("rope: base must be > 0, got {}", base));
  if (position_offset < 0) throw Error(fmt::format("rope: position offset must be >= 0, got {}", position_offset));
  Tensor y = rope_raw(x, base, position_offset, false);
  // x, y: (..., T, D). Backward: dx = rope_raw(dy, inverse): a rotation's transpose is the
  // inverse rotation; no saved forward quantity is needed.
  return record(kRope, y, {x}, [base, position_offset](const Tensor& g) -> Grads {
    return {rope_raw(g, base, position_offset, true)};
  });
}

// ---- the CPU kernels ---------------------------------------------------------------------

namespace cpu {
namespace {

// RoPE angles depend only on (t, c): one cos/sin table of seq x half entries, computed in
// double once per call, instead of a sincos per element (which was 9% of a training
// step). sin carries the sign of the direction (minus for the inverse).
template <typename T>
struct RopeTable {
  int64_t half;
  std::vector<T> cos, sin;
  RopeTable(int64_t seq, int64_t dim, double base, int64_t position_offset, bool inverse)
      : half(dim / 2), cos(seq * (dim / 2)), sin(seq * (dim / 2)) {
    const double sign = inverse ? -1.0 : 1.0;
    for (int64_t c = 0; c < half; ++c) {
      const double inv_freq = std::pow(base, -2.0 * static_cast<double>(c) / static_cast<double>(dim));
      for (int64_t t = 0; t < seq; ++t) {
        const double angle = static_cast<double>(t + position_offset) * inv_freq;
        cos[t * half + c] = static_cast<T>(std::cos(angle));
        sin[t * half + c] = static_cast<T>(sign * std::sin(angle));
      }
    }
  }
  // y = the rotation of x at position t (y may alias x: each pair is read before written).
  void rotate(const T* x, T* y, int64_t t) const {
    const T* cs = cos.data() + t * half;
    const T* sn = sin.data() + t * half;
    for (int64_t c = 0; c < half; ++c) {
      const T x1 = x[c], x2 = x[c + half];
      y[c] = x1 * cs[c] - x2 * sn[c];
      y[c + half] = x1 * sn[c] + x2 * cs[c];
    }
  }
};

template <typename T>
void rope(const T* x, T* y, int64_t rows, int64_t seq, int64_t dim, double base,
          int64_t position_offset, bool inverse) {
  const RopeTable<T> table(seq, dim, base, position_offset, inverse);
#pragma omp parallel for schedule(static) if (rows * seq * dim > 1 << 14)
  for (int64_t rt = 0; rt < rows * seq; ++rt) table.rotate(x + rt * dim, y + rt * dim, rt % seq);
}

template <typename T>
void qkv_heads(const T* src, T* dst, int64_t B, int64_t T_, int64_t H, int64_t D, double rope_base, bool to_heads) {
  const int64_t C = H * D;
  const bool rotate = rope_base > 0;
  const RopeTable<T> table(rotate ? T_ : 0, rotate ? D : 0, rotate ? rope_base : 1.0, 0, !to_heads);
#pragma omp parallel for schedule(static) if (B * T_ * 3 * C > 1 << 14)
  for (int64_t bt = 0; bt < B * T_; ++bt) {
    const int64_t b = bt / T_, t = bt % T_;
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t at_packed = (bt * 3 + part) * C + h * D;
        const int64_t at_heads = (((part * B + b) * H + h) * T_ + t) * D;
        const T* from = src + (to_heads ? at_packed : at_heads);
        T* to = dst + (to_heads ? at_heads : at_packed);
        if (rotate && part < 2) table.rotate(from, to, t);
        else std::copy(from, from + D, to);
      }
  }
}

}  // namespace
}  // namespace cpu

// ---- the CPU backend's methods --------------------------------------------------------------

using cpu::dispatch_float;

void CpuBackend::rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
          int64_t position_offset, bool inverse) {
  dispatch_float(dt, "rope", [&](auto t) {
    using T = decltype(t);
    cpu::rope<T>(static_cast<const T*>(x), static_cast<T*>(y), rows, seq, dim, base,
                 position_offset, inverse);
  });
}

static void cpu_qkv_to_heads(Backend&, DType dt, const void* qkv, void* heads, int64_t batch, int64_t seq,
                             int64_t n_heads, int64_t head_dim, double rope_base) {
  dispatch_float(dt, "qkv_to_heads", [&](auto t) {
    using T = decltype(t);
    cpu::qkv_heads<T>(static_cast<const T*>(qkv), static_cast<T*>(heads), batch, seq, n_heads, head_dim,
                      rope_base, /*to_heads=*/true);
  });
}

static void cpu_heads_to_qkv(Backend&, DType dt, void* dheads, void* dqkv, int64_t batch, int64_t seq,
                             int64_t n_heads, int64_t head_dim, double rope_base) {
  dispatch_float(dt, "heads_to_qkv", [&](auto t) {
    using T = decltype(t);
    cpu::qkv_heads<T>(static_cast<const T*>(dheads), static_cast<T*>(dqkv), batch, seq, n_heads, head_dim,
                      rope_base, /*to_heads=*/false);
  });
}

// ---- the kernels' defaults: a gather (strided_copy) and the rope kernel ---------------------

static void qkv_to_heads_default(Backend& b, DType dt, const void* qkv, void* heads, int64_t B, int64_t T, int64_t H,
                                 int64_t D, double rope_base) {
  const int64_t C = H * D;
  if (B * T * C == 0) return;
  b.strided_copy(dt, StridedView{qkv, {3, B, H, T, D}, {C, T * 3 * C, D, 3 * C, 1}, 0}, heads);
  if (rope_base > 0) b.rope(dt, heads, heads, 2 * B * H, T, D, rope_base, 0, false);
}

static void heads_to_qkv_default(Backend& b, DType dt, void* dheads, void* dqkv, int64_t B, int64_t T, int64_t H,
                                 int64_t D, double rope_base) {
  const int64_t C = H * D, part = B * T * C;
  if (part == 0) return;
  if (rope_base > 0) b.rope(dt, dheads, dheads, 2 * B * H, T, D, rope_base, 0, true);
  b.strided_copy(dt, StridedView{dheads, {B, T, 3, H, D}, {H * T * D, D, part, T * D, 1}, 0}, dqkv);
}

// ---- gradcheck rows -------------------------------------------------------------------------

std::vector<OpEntry> rope_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("rope", "rotary position embedding (rotate-half), offsets and bases",
                       [](const std::vector<Tensor>& x) { return add(rope(x[0]), rope(x[0], 10.0, 3)); }, [] {
    return Samples{{"(2,3,5,4)", {rnd({2, 3, 5, 4}, 620)}, {}, {}}, {"(4,2)", {rnd({4, 2}, 621)}, {}, {}},
                   threaded("(3,5,37,32)", {rnd({3, 5, 37, 32}, 622)})};
  }));
  return t;
}

}  // namespace runway
