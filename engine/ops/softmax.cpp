// Softmax over a dim, log_softmax, causal_mask, and cross_entropy (log-softmax and
// the target's negative log-likelihood, fused).
//
// Per op: the forward, the backward beside it with its formula, then the family's
// gradcheck rows, the reference kernels, and the CPU implementations and defaults of its
// fused kernels (engine/fused_kernel.h: softmax_rows, softmax_backward_rows, causal_mask,
// cross_entropy_forward, cross_entropy_backward). CUDA registers its implementations by
// name: cuda/ops/softmax.cu. Map: docs/architecture.md.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

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

// The fused kernels (engine/fused_kernel.h): a default composed from the Backend
// primitives and a CPU implementation each, defined below; other devices register theirs
// under the same names. Layouts: engine/backend.h, at Backend::softmax_rows & co.
static void softmax_rows_default(Backend& b, DType, const void*, void*, int64_t, int64_t, bool);
static void cpu_softmax_rows(Backend&, DType, const void*, void*, int64_t, int64_t, bool);
static const FusedKernel<DType, const void*, void*, int64_t, int64_t, bool> softmax_rows_kernel(
    "softmax_rows", &softmax_rows_default, &cpu_softmax_rows);
static void softmax_backward_rows_default(Backend& b, DType, const void*, const void*, void*, int64_t, int64_t, bool);
static void cpu_softmax_backward_rows(Backend&, DType, const void*, const void*, void*, int64_t, int64_t, bool);
static const FusedKernel<DType, const void*, const void*, void*, int64_t, int64_t, bool> softmax_backward_rows_kernel(
    "softmax_backward_rows", &softmax_backward_rows_default, &cpu_softmax_backward_rows);
static void causal_mask_default(Backend& b, DType, const void*, void*, int64_t, int64_t, int64_t, double);
static void cpu_causal_mask(Backend&, DType, const void*, void*, int64_t, int64_t, int64_t, double);
static const FusedKernel<DType, const void*, void*, int64_t, int64_t, int64_t, double> causal_mask_kernel(
    "causal_mask", &causal_mask_default, &cpu_causal_mask);
// (logits, targets) -> loss, lse (rows): per row loss[r] = logsumexp(logits[r]) -
// logits[r, target[r]], 0 where ignored; lse[r] is saved for the backward.
static void cross_entropy_forward_default(Backend& b, DType, const void*, const int64_t*, void*, void*, int64_t,
                                          int64_t, int64_t);
static void cpu_cross_entropy_forward(Backend&, DType, const void*, const int64_t*, void*, void*, int64_t, int64_t,
                                      int64_t);
static const FusedKernel<DType, const void*, const int64_t*, void*, void*, int64_t, int64_t, int64_t>
    cross_entropy_forward_kernel("cross_entropy_forward", &cross_entropy_forward_default,
                                 &cpu_cross_entropy_forward);
// dlogits[r] = scale * (softmax(logits[r]) - onehot(target[r])), 0 rows where ignored.
static void cross_entropy_backward_default(Backend& b, DType, const void*, const int64_t*, const void*, void*,
                                           int64_t, int64_t, int64_t, double);
static void cpu_cross_entropy_backward(Backend&, DType, const void*, const int64_t*, const void*, void*, int64_t,
                                       int64_t, int64_t, double);
static const FusedKernel<DType, const void*, const int64_t*, const void*, void*, int64_t, int64_t, int64_t, double>
    cross_entropy_backward_kernel("cross_entropy_backward", &cross_entropy_backward_default,
                                  &cpu_cross_entropy_backward);

// Backend's non-virtual shorthands for three of them (engine/backend.h): attention's
// defaults (engine/ops/attention.cpp) compose with them.
void Backend::softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  softmax_rows_kernel(*this, dt, x, y, rows, cols, log);
}
void Backend::softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx, int64_t rows, int64_t cols,
                                    bool log) {
  softmax_backward_rows_kernel(*this, dt, y, dy, dx, rows, cols, log);
}
void Backend::causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k, double value) {
  causal_mask_kernel(*this, dt, x, y, batch, t_q, t_k, value);
}

static const OpName kSoftmax = declare_op("softmax");
Tensor softmax(const Tensor& x, int64_t dim) {
  require_float(x, "softmax");
  const int64_t d = normalize_dim(dim, x.dim(), "softmax");
  Tensor out = along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    softmax_rows_kernel(be(x), x.dtype(), in.raw_data(), o.raw_data(), rows, cols, false);
  });
  // dx = y * (g - sum(g * y)): uses the forward output y
  return record(kSoftmax, out, {x}, [d, y = out.detach()](const Tensor& g) -> Grads {
    Tensor yl = dim_to_last(y, d).contiguous();
    return {along_dim(g, d, [&](const Tensor& gl, Tensor& o, int64_t rows, int64_t cols) {
      softmax_backward_rows_kernel(be(g), g.dtype(), yl.raw_data(), gl.raw_data(), o.raw_data(), rows, cols, false);
    })};
  });
}

static const OpName kLogSoftmax = declare_op("log_softmax");
Tensor log_softmax(const Tensor& x, int64_t dim) {
  require_float(x, "log_softmax");
  const int64_t d = normalize_dim(dim, x.dim(), "log_softmax");
  Tensor out = along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    softmax_rows_kernel(be(x), x.dtype(), in.raw_data(), o.raw_data(), rows, cols, true);
  });
  // dx = g - exp(y) * sum(g): uses the forward output y = log_softmax(x)
  return record(kLogSoftmax, out, {x}, [d, y = out.detach()](const Tensor& g) -> Grads {
    Tensor yl = dim_to_last(y, d).contiguous();
    return {along_dim(g, d, [&](const Tensor& gl, Tensor& o, int64_t rows, int64_t cols) {
      softmax_backward_rows_kernel(be(g), g.dtype(), yl.raw_data(), gl.raw_data(), o.raw_data(), rows, cols, true);
    })};
  });
}

namespace {
Tensor causal_mask_raw(const Tensor& x, double value) {
  if (x.dim() < 2)
    throw Error(fmt::format("causal_mask: needs at least 2 dims (..., T_q, T_k), got {}", x.shape_str()));
  const int64_t tq = x.size(-2), tk = x.size(-1);
  if (tk < tq)
    throw Error(fmt::format("causal_mask: T_k ({}) < T_q ({}) in {}: queries must see themselves",
                            tk, tq, x.shape_str()));
  Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel())
    causal_mask_kernel(be(x), x.dtype(), in.raw_data(), out.raw_data(), x.numel() / (tq * tk), tq, tk, value);
  return out;
}
}  // namespace

static const OpName kCausalMask = declare_op("causal_mask");
Tensor causal_mask(const Tensor& x, double value) {
  require_float(x, "causal_mask");
  Tensor out = causal_mask_raw(x, value);
  // Masked entries are constants: their gradient is zero.
  return record(kCausalMask, out, {x}, [](const Tensor& g) -> Grads { return {causal_mask_raw(g, 0.0)}; });
}

static const OpName kCrossEntropy = declare_op("cross_entropy");
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  require_float(logits, "cross_entropy");
  if (logits.dim() < 1 || Shape(logits.shape().begin(), logits.shape().end() - 1) != targets.shape())
    throw Error(fmt::format("cross_entropy: logits {} need targets of shape {}, got {}", logits.shape_str(),
                            shape_to_string(Shape(logits.shape().begin(), logits.shape().end() - (logits.dim() ? 1 : 0))),
                            targets.shape_str()));
  if (targets.device() != logits.device())
    throw Error("cross_entropy: logits and targets are on different devices");
  const int64_t vocab = logits.size(-1), rows = targets.numel();
  check_indices(targets, vocab, true, ignore_index, "cross_entropy", "targets");
  int64_t count = 0;
  for (int64_t t : targets.to_indices()) count += t != ignore_index;
  Tensor lc = logits.detach().contiguous(), tc = targets.contiguous();
  Tensor losses = Tensor::empty({rows}, logits.dtype(), logits.device());
  Tensor lse = Tensor::empty({rows}, logits.dtype(), logits.device());
  if (rows)
    cross_entropy_forward_kernel(be(logits), logits.dtype(), lc.raw_data(),
                                 static_cast<const int64_t*>(tc.raw_data()), losses.raw_data(), lse.raw_data(), rows,
                                 vocab, ignore_index);
  // Mean over the targets that count; 0 (with zero gradient) when none do.
  const double scale = count ? 1.0 / static_cast<double>(count) : 0.0;
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mul_scalar(sum(losses), scale);
  }
  // dlogits = (softmax(logits) - onehot(target)) * g / count, using the saved logsumexp
  return record(kCrossEntropy, out, {logits, targets},
                [lc, tc, lse, rows, vocab, ignore_index, scale](const Tensor& g) -> Grads {
                  Tensor d = Tensor::empty(lc.shape(), lc.dtype(), lc.device());
                  if (rows)
                    cross_entropy_backward_kernel(be(lc), lc.dtype(), lc.raw_data(),
                                                  static_cast<const int64_t*>(tc.raw_data()), lse.raw_data(),
                                                  d.raw_data(), rows, vocab, ignore_index, scale);
                  return {mul(d, g), Tensor()};
                });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> softmax_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("softmax", "softmax over the last dim and over dim 0",
             [](const std::vector<Tensor>& x) { return add(softmax(x[0], -1), softmax(x[0], 0)); },
             [] {
               return Samples{{"(3,4)", {rnd({3, 4}, 71, -2, 2)}, {}}, {"(1,)", {rnd({1}, 72)}, {}},
                              threaded("(129,131)", {rnd({129, 131}, 77, -2, 2)})};
             }));
  t.push_back(op_entry("log_softmax", "log_softmax over the last dim and over dim 1",
             [](const std::vector<Tensor>& x) { return add(log_softmax(x[0], -1), log_softmax(x[0], 1)); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 73, -2, 2)}, {}}, threaded("(3,43,131)", {rnd({3, 43, 131}, 78, -2, 2)})}; }));
  t.push_back(op_entry("causal_mask", "masking j > i with a finite value (-inf makes differences NaN)",
             [](const std::vector<Tensor>& x) { return causal_mask(x[0], -5.0); },
             [] { return Samples{{"(2,4,4)", {rnd({2, 4, 4}, 74)}, {}}, {"rectangular (3,5)", {rnd({3, 5}, 75)}, {}}}; }));
  t.push_back(op_entry("causal_softmax", "softmax(causal_mask(x, -inf)): masked weights are exactly 0",
             [](const std::vector<Tensor>& x) { return softmax(causal_mask(x[0]), -1); },
             [] { return Samples{{"(2,5,5)", {rnd({2, 5, 5}, 76, -2, 2)}, {}}, threaded("(3,77,77)", {rnd({3, 77, 77}, 79, -2, 2)})}; },
             true));
  t.push_back(op_entry("cross_entropy", "mean cross-entropy over logits with an ignore index",
             [](const std::vector<Tensor>& x) { return cross_entropy(x[0], x[1], -100); },
             [] {
               return Samples{{"(4,5), one ignored", {rnd({4, 5}, 111, -2, 2), ids({1, -100, 4, 0}, {4})}, {}},
                              {"(2,3,5) 3-D logits", {rnd({2, 3, 5}, 112, -2, 2), ids({0, 1, 2, 3, 4, 0}, {2, 3})}, {}},
                              threaded("(3,43,131), every 7th ignored", {rnd({3, 43, 131}, 113, -2, 2), [] {
                                         std::vector<int64_t> t(129);
                                         for (int64_t i = 0; i < 129; ++i) t[i] = i % 7 == 3 ? -100 : (i * 37) % 131;
                                         return ids(t, {3, 43});
                                       }()})};
             }));
  // A composite: causal attention written with this family's primitives (and matmul).
  t.push_back(op_entry("causal_attention_primitives",
             "softmax(causal_mask(Q K^T / sqrt(D))) V from primitives, (B,H,T,D)",
             [](const std::vector<Tensor>& x) {
               const double scale = 1.0 / std::sqrt(static_cast<double>(x[0].size(-1)));
               Tensor s = mul_scalar(matmul(x[0], transpose(x[1], -1, -2)), scale);
               return matmul(softmax(causal_mask(s), -1), x[2]);
             },
             [] {
               return Samples{{"B=1,H=2,T=5,D=3", {rnd({1, 2, 5, 3}, 131), rnd({1, 2, 5, 3}, 132), rnd({1, 2, 5, 3}, 133)}, {}},
                              threaded("B=3,H=5,T=41,D=16", qkv(3, 5, 41, 16, 134))};
             },
             true));
  return t;
}

// =====================================================================================
// Reference CPU kernels (engine/cpu_reference.h): plain loops in double, the math of the
// tuned kernels below; tests/test_threaded_kernels.cpp holds the two equal.
// =====================================================================================

namespace cpu::reference {

void softmax_rows(const double* x, double* y, int64_t rows, int64_t cols, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = x + r * cols;
    double m = -INFINITY, total = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, xr[c]);
    if (m == -INFINITY) m = 0;  // a fully masked row
    for (int64_t c = 0; c < cols; ++c) total += std::exp(xr[c] - m);
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = log ? xr[c] - m - std::log(total) : std::exp(xr[c] - m) / total;
  }
}

void softmax_backward_rows(const double* y, const double* dy, double* dx, int64_t rows, int64_t cols, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    // softmax: dx = y (dy - <dy, y>); log_softmax: dx = dy - exp(y) sum(dy)
    double dot = 0, sum_dy = 0;
    for (int64_t c = 0; c < cols; ++c) {
      dot += dy[o + c] * y[o + c];
      sum_dy += dy[o + c];
    }
    for (int64_t c = 0; c < cols; ++c)
      dx[o + c] = log ? dy[o + c] - std::exp(y[o + c]) * sum_dy : y[o + c] * (dy[o + c] - dot);
  }
}

void cross_entropy_forward(const double* logits, const int64_t* targets, double* loss, double* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = logits + r * cols;
    double m = -INFINITY, total = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, row[c]);
    for (int64_t c = 0; c < cols; ++c) total += std::exp(row[c] - m);
    lse[r] = m + std::log(total);
    loss[r] = targets[r] == ignore_index ? 0.0 : lse[r] - row[targets[r]];
  }
}

void cross_entropy_backward(const double* logits, const int64_t* targets, const double* lse, double* dlogits,
                            int64_t rows, int64_t cols, int64_t ignore_index, double scale) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dlogits[r * cols + c] = targets[r] == ignore_index
                                  ? 0.0
                                  : scale * (std::exp(logits[r * cols + c] - lse[r]) - (c == targets[r] ? 1.0 : 0.0));
}

}  // namespace cpu::reference

// =====================================================================================
// CPU implementations of the kernels (no backend state: the Backend& is unused).
// =====================================================================================

static void cpu_softmax_rows(Backend&, DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  dispatch_float(dt, "softmax", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = in + r * cols;
      T* o = out + r * cols;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, row[c]);
      if (m == -std::numeric_limits<T>::infinity()) m = 0;  // fully masked row
      T total = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const T e = std::exp(row[c] - m);
        if (!log) o[c] = e;
        total += e;
      }
      if (log) {
        const T lse = m + std::log(total);
        for (int64_t c = 0; c < cols; ++c) o[c] = row[c] - lse;
      } else {
        const T inv = T(1) / total;
        for (int64_t c = 0; c < cols; ++c) o[c] *= inv;
      }
    }
  });
}

static void cpu_softmax_backward_rows(Backend&, DType dt, const void* y, const void* dy, void* dx, int64_t rows,
                                      int64_t cols, bool log) {
  dispatch_float(dt, "softmax_backward", [&](auto t) {
    using T = decltype(t);
    const T* py = static_cast<const T*>(y);
    const T* pdy = static_cast<const T*>(dy);
    T* pdx = static_cast<T*>(dx);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* yr = py + r * cols;
      const T* gr = pdy + r * cols;
      T* o = pdx + r * cols;
      T dot = 0;
      if (log) {
        for (int64_t c = 0; c < cols; ++c) dot += gr[c];
        for (int64_t c = 0; c < cols; ++c) o[c] = gr[c] - std::exp(yr[c]) * dot;
      } else {
        for (int64_t c = 0; c < cols; ++c) dot += gr[c] * yr[c];
        for (int64_t c = 0; c < cols; ++c) o[c] = yr[c] * (gr[c] - dot);
      }
    }
  });
}

static void cpu_causal_mask(Backend&, DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                            double value) {
  dispatch_float(dt, "causal_mask", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    const int64_t shift = t_k - t_q;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < t_q; ++i)
        for (int64_t j = 0; j < t_k; ++j) {
          const int64_t idx = (b * t_q + i) * t_k + j;
          out[idx] = j > i + shift ? static_cast<T>(value) : in[idx];
        }
  });
}

static void cpu_cross_entropy_forward(Backend&, DType dt, const void* logits, const int64_t* targets, void* loss,
                                      void* lse, int64_t rows, int64_t cols, int64_t ignore_index) {
  dispatch_float(dt, "cross_entropy", [&](auto t) {
    using T = decltype(t);
    const T* pl = static_cast<const T*>(logits);
    T* ploss = static_cast<T*>(loss);
    T* plse = static_cast<T*>(lse);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = pl + r * cols;
      if (cols == 0) {  // no classes: only ignored targets can pass the op's checks
        plse[r] = -std::numeric_limits<T>::infinity();
        ploss[r] = T(0);
        continue;
      }
      // Eigen arrays: vectorised max, exp and sum over the row.
      const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> ra(row, cols);
      const T m = ra.maxCoeff();
      const T l = m + std::log((ra - m).exp().sum());
      plse[r] = l;
      ploss[r] = targets[r] == ignore_index ? T(0) : l - row[targets[r]];
    }
  });
}

static void cpu_cross_entropy_backward(Backend&, DType dt, const void* logits, const int64_t* targets,
                                       const void* lse, void* dlogits, int64_t rows, int64_t cols,
                                       int64_t ignore_index, double scale) {
  dispatch_float(dt, "cross_entropy_backward", [&](auto t) {
    using T = decltype(t);
    const T* pl = static_cast<const T*>(logits);
    const T* plse = static_cast<const T*>(lse);
    T* pd = static_cast<T*>(dlogits);
    const T s = static_cast<T>(scale);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      T* d = pd + r * cols;
      if (targets[r] == ignore_index) {
        std::fill_n(d, cols, T(0));
        continue;
      }
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(d, cols) =
          s * (Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(pl + r * cols, cols) - plse[r]).exp();
      d[targets[r]] -= s;
    }
  });
}

// =====================================================================================
// The kernels' defaults: softmax, causal_mask and cross_entropy composed from the Backend
// primitives, for a backend with no implementation registered.
// tests/test_backend_defaults.cpp holds them equal to the CPU implementations above.
// =====================================================================================

// y = exp(x - m) / sum(exp(x - m)) with m the row max, or for log:
// y = x - (m + log(sum(exp(x - m)))). A fully masked row (all -inf) has m = 0 (the CPU
// kernel's convention): its exp(x - m) are 0, not NaN.
static void softmax_rows_default(Backend& b, DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  if (rows * cols == 0) return;
  Scratch m(b, dt, rows), total(b, dt, rows);
  b.max_rows(dt, x, m.get(), rows, cols);
  std::vector<double> host_m = to_host_f64(b, dt, m.get(), rows);
  bool masked_row = false;
  for (double& v : host_m)
    if (v == -std::numeric_limits<double>::infinity()) v = 0, masked_row = true;
  if (masked_row) from_host_f64(b, dt, host_m, m.get());
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), x, m.get(), y);  // y = x - m
  if (!log) {
    b.unary(UnaryOp::Exp, dt, y, y, rows * cols, 0.0);
    b.sum_rows(dt, y, total.get(), rows, cols);
    b.binary(BinaryOp::Div, dt, per_row_plan(rows, cols), y, total.get(), y);
    return;
  }
  Scratch e(b, dt, rows * cols);
  b.unary(UnaryOp::Exp, dt, y, e.get(), rows * cols, 0.0);
  b.sum_rows(dt, e.get(), total.get(), rows, cols);
  b.unary(UnaryOp::Log, dt, total.get(), total.get(), rows, 0.0);
  b.binary(BinaryOp::Add, dt, BroadcastPlan{{rows}, {1}, {1}}, m.get(), total.get(), total.get());  // logsumexp
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), x, total.get(), y);
}

// softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy).
static void softmax_backward_rows_default(Backend& b, DType dt, const void* y, const void* dy, void* dx, int64_t rows,
                                          int64_t cols, bool log) {
  if (rows * cols == 0) return;
  Scratch dot(b, dt, rows), tmp(b, dt, rows * cols);
  if (log) {
    b.sum_rows(dt, dy, dot.get(), rows, cols);
    b.unary(UnaryOp::Exp, dt, y, tmp.get(), rows * cols, 0.0);
    b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), tmp.get(), dot.get(), tmp.get());
    b.binary(BinaryOp::Sub, dt, same_plan(rows, cols), dy, tmp.get(), dx);
    return;
  }
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dy, y, tmp.get());
  b.sum_rows(dt, tmp.get(), dot.get(), rows, cols);
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), dy, dot.get(), dx);
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dx, y, dx);
}

// A copy, then each row's tail j > i + (t_k - t_q) filled with value.
static void causal_mask_default(Backend& b, DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                                double value) {
  const int64_t n = batch * t_q * t_k;
  if (n == 0) return;
  if (x != y) b.copy_within(y, x, static_cast<size_t>(n) * dtype_size(dt));
  const int64_t shift = t_k - t_q;
  for (int64_t m = 0; m < batch; ++m)
    for (int64_t i = 0; i < t_q; ++i) {
      const int64_t first = std::max<int64_t>(i + shift + 1, 0);
      if (first < t_k) b.fill(dt, at(y, dt, (m * t_q + i) * t_k + first), t_k - first, value);
    }
}

// lse = m + log(sum(exp(logits - m))) with m the row max; loss = lse - logits[r, target]
// (the picked logits gathered row by row), 0 where ignored.
static void cross_entropy_forward_default(Backend& b, DType dt, const void* logits, const int64_t* targets,
                                          void* loss, void* lse, int64_t rows, int64_t cols, int64_t ignore_index) {
  if (rows == 0) return;
  if (cols == 0) {  // no classes: only ignored targets can pass the op's checks
    b.fill(dt, lse, rows, -std::numeric_limits<double>::infinity());
    b.fill(dt, loss, rows, 0.0);
    return;
  }
  Scratch m(b, dt, rows), shifted(b, dt, rows * cols), picked(b, dt, rows);
  b.max_rows(dt, logits, m.get(), rows, cols);
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), logits, m.get(), shifted.get());
  b.unary(UnaryOp::Exp, dt, shifted.get(), shifted.get(), rows * cols, 0.0);
  b.sum_rows(dt, shifted.get(), lse, rows, cols);
  b.unary(UnaryOp::Log, dt, lse, lse, rows, 0.0);
  b.binary(BinaryOp::Add, dt, BroadcastPlan{{rows}, {1}, {1}}, m.get(), lse, lse);
  const std::vector<int64_t> target = indices_to_host(b, targets, rows);
  b.fill(dt, picked.get(), rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    if (target[r] != ignore_index)
      b.copy_within(at(picked.get(), dt, r), at(logits, dt, r * cols + target[r]), dtype_size(dt));
  b.binary(BinaryOp::Sub, dt, BroadcastPlan{{rows}, {1}, {1}}, lse, picked.get(), loss);
  for (int64_t r = 0; r < rows; ++r)
    if (target[r] == ignore_index) b.fill(dt, at(loss, dt, r), 1, 0.0);
}

// dlogits = scale * exp(logits - lse), then scale subtracted at each target; ignored rows 0.
static void cross_entropy_backward_default(Backend& b, DType dt, const void* logits, const int64_t* targets,
                                           const void* lse, void* dlogits, int64_t rows, int64_t cols,
                                           int64_t ignore_index, double scale) {
  if (rows * cols == 0) return;
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), logits, lse, dlogits);
  b.unary(UnaryOp::Exp, dt, dlogits, dlogits, rows * cols, 0.0);
  b.unary(UnaryOp::MulScalar, dt, dlogits, dlogits, rows * cols, scale);
  Scratch s(b, dt, 1);
  b.fill(dt, s.get(), 1, scale);
  const std::vector<int64_t> target = indices_to_host(b, targets, rows);
  for (int64_t r = 0; r < rows; ++r) {
    if (target[r] == ignore_index) {
      b.fill(dt, at(dlogits, dt, r * cols), cols, 0.0);
      continue;
    }
    void* d = at(dlogits, dt, r * cols + target[r]);
    b.binary(BinaryOp::Sub, dt, scalar_plan(1), d, s.get(), d);
  }
}

}  // namespace runway
