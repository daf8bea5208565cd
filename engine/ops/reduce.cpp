// Reductions and scans over dims: sum, mean (sum * 1/n), max, cumsum.
//
// Per op: the forward, the backward beside it with its formula, then the family's
// gradcheck rows and its CPU kernels (CpuBackend::sum_rows, max_rows; the fused kernel
// cumsum_rows, engine/fused_kernel.h, with its CPU implementation and its default).
// CUDA: cuda/ops/reduce.cu. Map: docs/architecture.md.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/cpu_reference.h"
#include "engine/fused_kernel.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/op_samples.h"

namespace runway {

using namespace op_helpers;
using cpu::dispatch_any;
using cpu::dispatch_float;
using cpu::for_each_run;

// =====================================================================================
// Reductions.
// =====================================================================================

// The fused kernel cumsum_rows (engine/fused_kernel.h): its default composed from the Backend
// primitives and its CPU implementation, defined below; other devices register theirs under
// the same name. Layout: engine/backend.h, at Backend::cumsum_rows.
static void cumsum_rows_default(Backend& b, DType, const void*, void*, int64_t, int64_t, bool, bool);
static void cpu_cumsum_rows(Backend&, DType, const void*, void*, int64_t, int64_t, bool, bool);
static const FusedKernel<DType, const void*, void*, int64_t, int64_t, bool, bool>
    cumsum_rows_kernel("cumsum_rows", &cumsum_rows_default, &cpu_cumsum_rows);

// Backend's non-virtual shorthand for it (engine/backend.h): attention's defaults
// (engine/ops/attention.cpp) compose with it.
void Backend::cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                          bool reverse) {
  cumsum_rows_kernel(*this, dt, x, y, rows, cols, exclusive, reverse);
}

static const OpName kSum = declare_op("sum");
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  require_float(x, "sum");
  const auto rd = normalize_dims(dims, x.dim(), "sum");
  Tensor kept = reduce_raw(x, rd, [&](const Tensor& in, Tensor& out, int64_t rows, int64_t cols) {
    if (cols == 0) {
      be(x).fill(x.dtype(), out.raw_data(), out.numel(), 0.0);
      return;
    }
    be(x).sum_rows(x.dtype(), in.raw_data(), out.raw_data(), rows, cols);
  });
  Tensor out = keepdim ? kept : make_view(kept, drop_dims(kept.shape(), rd),
                                          contiguous_strides(drop_dims(kept.shape(), rd)), 0);
  // Every input element contributes once: the gradient is g broadcast back.
  return record(kSum, out, {x}, [rd, in_shape = x.shape()](const Tensor& g) -> Grads {
    return {expand(reshape(g, keepdim_shape(in_shape, rd)), in_shape)};
  });
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  require_float(x, "mean");
  const auto rd = normalize_dims(dims, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t d : rd) count *= x.shape()[d];
  return mul_scalar(sum(x, rd, keepdim), count ? 1.0 / static_cast<double>(count) : NAN);
}

static const OpName kMax = declare_op("max");
Tensor max(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  require_float(x, "max");
  const auto rd = normalize_dims(dims, x.dim(), "max");
  for (int64_t d : rd)
    if (x.shape()[d] == 0) throw Error(fmt::format("max: dim {} of {} is empty", d, x.shape_str()));
  Tensor kept = reduce_raw(x, rd, [&](const Tensor& in, Tensor& out, int64_t rows, int64_t cols) {
    be(x).max_rows(x.dtype(), in.raw_data(), out.raw_data(), rows, cols);
  });
  Tensor out = keepdim ? kept : make_view(kept, drop_dims(kept.shape(), rd),
                                          contiguous_strides(drop_dims(kept.shape(), rd)), 0);
  // The gradient goes to the positions that hold the maximum, split equally among ties.
  return record(kMax, out, {x}, [rd, x = x.detach(), kept = kept.detach()](const Tensor& g) -> Grads {
    Tensor is_max = binary_raw(BinaryOp::Equal, x, kept, "max backward");
    Tensor count = sum(is_max, rd, true);
    return {mul(is_max, div(reshape(g, kept.shape()), count))};
  });
}

namespace {
Tensor cumsum_raw(const Tensor& x, int64_t d, bool exclusive, bool reverse) {
  return along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    cumsum_rows_kernel(be(x), x.dtype(), in.raw_data(), o.raw_data(), rows, cols, exclusive, reverse);
  });
}
}  // namespace

static const OpName kCumsum = declare_op("cumsum");
Tensor cumsum(const Tensor& x, int64_t dim, bool exclusive, bool reverse) {
  require_float(x, "cumsum");
  const int64_t d = normalize_dim(dim, x.dim(), "cumsum");
  Tensor out = cumsum_raw(x, d, exclusive, reverse);
  // y_i = sum of x_j over j before (or up to) i; so dx_j = sum of g_i over the i
  // that include j: the same kind of scan in the opposite direction.
  return record(kCumsum, out, {x}, [d, exclusive, reverse](const Tensor& g) -> Grads {
    return {cumsum_raw(g, d, exclusive, !reverse)};
  });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> reduce_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("sum", "sum over all, one, and several dims, keepdim or not",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(sum(x[0]), {1}), reshape(sum(x[0], {1}), {-1}),
                              reshape(sum(x[0], {0, 2}, true), {-1})}, 0);
             },
             [] {
               return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 61)}, {}},
                              threaded("(3,129,173) over dims 2 and 1", {rnd({3, 129, 173}, 66)}, [](const std::vector<Tensor>& x) {
                                return concat({reshape(sum(x[0], {2}), {-1}), reshape(sum(x[0], {1}), {-1})}, 0);
                              })};
             }));
  t.push_back(op_entry("mean", "mean over dims (composite: sum * 1/n)",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(mean(x[0]), {1}), reshape(mean(x[0], {-1}, true), {-1})}, 0);
             },
             [] {
               return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 62)}, {}},
                              threaded("(3,129,173) over the last dim", {rnd({3, 129, 173}, 67)},
                                       [](const std::vector<Tensor>& x) { return mean(x[0], {-1}); })};
             },
             true));
  t.push_back(op_entry("max", "max over dims; random inputs have no ties",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(max(x[0]), {1}), reshape(max(x[0], {1}), {-1}),
                              reshape(max(x[0], {0, 2}, true), {-1})}, 0);
             },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 63)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 68)})}; }));
  t.push_back(op_entry("cumsum", "cumulative sum: inclusive/exclusive, forward/reverse, dims 0 and 1",
             [](const std::vector<Tensor>& x) {
               return concat({cumsum(x[0], 1), cumsum(x[0], 1, true), cumsum(x[0], 1, false, true),
                              cumsum(x[0], 1, true, true), cumsum(x[0], 0, true, false)}, 1);
             },
             [] {
               return Samples{{"(3,4)", {rnd({3, 4}, 91)}, {}}, {"(1,1)", {rnd({1, 1}, 92)}, {}},
                              threaded("(257,259)", {rnd({257, 259}, 93)})};
             }));
  return t;
}

// =====================================================================================
// Reference CPU kernels (engine/cpu_reference.h): plain loops in double, the math of the
// tuned kernels below; tests/test_threaded_kernels.cpp holds the two equal.
// =====================================================================================

void cpu::reference::sum_rows(const double* x, double* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    y[r] = 0;
    for (int64_t c = 0; c < cols; ++c) y[r] += x[r * cols + c];
  }
}

// =====================================================================================
// CPU kernels (CpuBackend, engine/cpu_backend.h).
// =====================================================================================

void CpuBackend::sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  dispatch_float(dt, "sum", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
#pragma omp parallel for if (rows * cols > 1 << 16) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      // Accumulate in double so float32 sums of long rows stay accurate.
      double acc = 0;
      const T* row = in + r * cols;
      for (int64_t c = 0; c < cols; ++c) acc += row[c];
      out[r] = static_cast<T>(acc);
    }
  });
}

void CpuBackend::max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  dispatch_float(dt, "max", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    for (int64_t r = 0; r < rows; ++r) {
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, in[r * cols + c]);
      out[r] = m;
    }
  });
}

static void cpu_cumsum_rows(Backend&, DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                            bool reverse) {
  dispatch_float(dt, "cumsum", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    for (int64_t r = 0; r < rows; ++r) {
      T acc = 0;
      for (int64_t s = 0; s < cols; ++s) {
        const int64_t c = reverse ? cols - 1 - s : s;
        const T v = in[r * cols + c];
        if (exclusive) {
          out[r * cols + c] = acc;
          acc += v;
        } else {
          acc += v;
          out[r * cols + c] = acc;
        }
      }
    }
  });
}

// =====================================================================================
// The cumsum_rows kernel's default, composed from the Backend primitives, for a backend
// with no implementation registered. tests/test_backend_defaults.cpp holds it equal to the
// CPU implementation above.
// =====================================================================================

// One product with a (C x C) triangle of ones: y = x @ U, U[j][c] = 1 where x[j] counts
// towards y[c] (j <= c inclusive, j < c exclusive; mirrored for reverse).
static void cumsum_rows_default(Backend& b, DType dt, const void* x, void* y, int64_t rows, int64_t cols,
                                bool exclusive, bool reverse) {
  if (rows * cols == 0) return;
  std::vector<double> triangle(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t c = 0; c < cols; ++c) {
      const bool counts = reverse ? (exclusive ? j > c : j >= c) : (exclusive ? j < c : j <= c);
      triangle[static_cast<size_t>(j * cols + c)] = counts ? 1.0 : 0.0;
    }
  Scratch u(b, dt, cols * cols);
  from_host_f64(b, dt, triangle, u.get());
  GemmArgs g;
  g.m = rows;
  g.n = cols;
  g.k = cols;
  g.lda = cols;
  g.ldb = cols;
  g.ldc = cols;
  b.gemm(dt, g, x, u.get(), y);
}

}  // namespace runway
