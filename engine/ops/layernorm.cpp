// layernorm over the last dim, with weight and bias.
//
// The two fused kernels (engine/fused_kernel.h), the forward, the backward beside it with
// its formula, then the gradcheck rows, the reference, the CPU implementations and the
// defaults composed from the Backend primitives. CUDA registers its implementations by
// name: cuda/ops/layernorm.cu. Map: docs/architecture.md.

#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "engine/autograd.h"
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

// The kernels: a default and a CPU implementation each, defined below; other devices
// register theirs under the same names.
// y = (x - mean) * rstd * weight + bias per row; mean and rstd (rows) are saved.
static void layernorm_forward_default(Backend& b, DType dt, const void* x, const void* weight, const void* bias,
                                      void* y, void* mean, void* rstd, int64_t rows, int64_t cols, double eps);
static void cpu_layernorm_forward(Backend&, DType dt, const void* x, const void* weight, const void* bias, void* y,
                                  void* mean, void* rstd, int64_t rows, int64_t cols, double eps);
static const FusedKernel<DType, const void*, const void*, const void*, void*, void*, void*, int64_t, int64_t, double>
    layernorm_forward_kernel("layernorm_forward", &layernorm_forward_default, &cpu_layernorm_forward);
// Writes dx; accumulates (+=) into dweight and dbias. Uses x, mean, rstd from forward.
static void layernorm_backward_default(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                       const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                                       int64_t rows, int64_t cols);
static void cpu_layernorm_backward(Backend&, DType dt, const void* dy, const void* x, const void* weight,
                                   const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                                   int64_t rows, int64_t cols);
static const FusedKernel<DType, const void*, const void*, const void*, const void*, const void*, void*, void*, void*,
                         int64_t, int64_t>
    layernorm_backward_kernel("layernorm_backward", &layernorm_backward_default, &cpu_layernorm_backward);

static const OpName kLayernorm = declare_op("layernorm");
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  require_same(x, weight, "layernorm");
  require_same(x, bias, "layernorm");
  if (x.dim() < 1 || weight.shape() != Shape{x.size(-1)} || bias.shape() != Shape{x.size(-1)})
    throw Error(fmt::format("layernorm: x {} needs weight and bias of shape ({},), got {} and {}",
                            x.shape_str(), x.dim() ? x.size(-1) : 0, weight.shape_str(), bias.shape_str()));
  if (!(eps > 0)) throw Error(fmt::format("layernorm: eps must be > 0, got {}", eps));
  const int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  Tensor xc = x.detach().contiguous(), w = weight.detach().contiguous(), b = bias.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean_t = Tensor::empty({rows}, x.dtype(), x.device());
  Tensor rstd_t = Tensor::empty({rows}, x.dtype(), x.device());
  if (rows)
    layernorm_forward_kernel(be(x), x.dtype(), xc.raw_data(), w.raw_data(), b.raw_data(), out.raw_data(),
                             mean_t.raw_data(), rstd_t.raw_data(), rows, cols, eps);
  // x (rows, C), weight and bias (C,); saved: mean and rstd (rows,). Per row, with
  // xhat = (x - mean) * rstd and dxhat = g * weight:
  //   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
  //   dweight = sum over rows of g * xhat,   dbias = sum over rows of g
  // (the kernels: cpu_layernorm_backward and layernorm_backward_default, below).
  return record(kLayernorm, out, {x, weight, bias},
                [xc, w, mean_t, rstd_t, rows, cols](const Tensor& g) -> Grads {
                  Tensor gc = g.contiguous();
                  Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
                  Tensor dw = Tensor::zeros({cols}, xc.dtype(), xc.device());
                  Tensor db = Tensor::zeros({cols}, xc.dtype(), xc.device());
                  if (rows)
                    layernorm_backward_kernel(be(xc), xc.dtype(), gc.raw_data(), xc.raw_data(), w.raw_data(),
                                              mean_t.raw_data(), rstd_t.raw_data(), dx.raw_data(),
                                              dw.raw_data(), db.raw_data(), rows, cols);
                  return {dx, dw, db};
                });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> layernorm_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("layernorm", "layernorm over the last dim with weight and bias",
             [](const std::vector<Tensor>& x) { return layernorm(x[0], x[1], x[2]); },
             [] {
               return Samples{{"(2,3,5)", {rnd({2, 3, 5}, 81, -2, 2), rnd({5}, 82, 0.5, 1.5), rnd({5}, 83)}, {}},
                              {"(4,2)", {rnd({4, 2}, 84, -2, 2), rnd({2}, 85, 0.5, 1.5), rnd({2}, 86)}, {}},
                              threaded("(3,43,131)", {rnd({3, 43, 131}, 87, -2, 2), rnd({131}, 88, 0.5, 1.5), rnd({131}, 89)})};
             }));
  return t;
}

// =====================================================================================
// Reference CPU kernels (engine/cpu_reference.h): plain loops in double, the math of the
// tuned kernels below; tests/test_threaded_kernels.cpp holds the two equal.
// =====================================================================================

namespace cpu::reference {

void layernorm_forward(const double* x, const double* weight, const double* bias, double* y, double* mean,
                       double* rstd, int64_t rows, int64_t cols, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = x + r * cols;
    double m = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) m += xr[c];
    m /= static_cast<double>(cols);
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - m) * (xr[c] - m);
    var /= static_cast<double>(cols);
    mean[r] = m;
    rstd[r] = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = (xr[c] - m) * rstd[r] * weight[c] + bias[c];
  }
}

void layernorm_backward(const double* dy, const double* x, const double* weight, const double* mean,
                        const double* rstd, double* dx, double* dweight, double* dbias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    double mean_dxhat = 0, mean_dxhat_xhat = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (x[o + c] - mean[r]) * rstd[r], dxhat = dy[o + c] * weight[c];
      mean_dxhat += dxhat / static_cast<double>(cols);
      mean_dxhat_xhat += dxhat * xhat / static_cast<double>(cols);
      dweight[c] += dy[o + c] * xhat;
      dbias[c] += dy[o + c];
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (x[o + c] - mean[r]) * rstd[r];
      dx[o + c] = rstd[r] * (dy[o + c] * weight[c] - mean_dxhat - xhat * mean_dxhat_xhat);
    }
  }
}

}  // namespace cpu::reference

// =====================================================================================
// CPU implementations of the kernels (no backend state: the Backend& is unused).
// =====================================================================================

static void cpu_layernorm_forward(Backend&, DType dt, const void* x, const void* weight, const void* bias, void* y,
                                  void* mean, void* rstd, int64_t rows, int64_t cols, double eps) {
  dispatch_float(dt, "layernorm", [&](auto t) {
    using T = decltype(t);
    const T* px = static_cast<const T*>(x);
    const T* w = static_cast<const T*>(weight);
    const T* bb = static_cast<const T*>(bias);
    T* py = static_cast<T*>(y);
    T* pm = static_cast<T*>(mean);
    T* pr = static_cast<T*>(rstd);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * cols;
      // Eigen's reductions vectorise (a plain `m += x[c]` loop is one serial chain).
      const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> xa(xr, cols);
      const T m = xa.sum() / static_cast<T>(cols);
      const T v = (xa - m).square().sum() / static_cast<T>(cols);
      const T rs = T(1) / std::sqrt(v + static_cast<T>(eps));
      for (int64_t c = 0; c < cols; ++c) py[r * cols + c] = (xr[c] - m) * rs * w[c] + bb[c];
      pm[r] = m;
      pr[r] = rs;
    }
  });
}

static void cpu_layernorm_backward(Backend&, DType dt, const void* dy, const void* x, const void* weight,
                                   const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                                   int64_t rows, int64_t cols) {
  dispatch_float(dt, "layernorm_backward", [&](auto t) {
    using T = decltype(t);
    const T* pdy = static_cast<const T*>(dy);
    const T* px = static_cast<const T*>(x);
    const T* w = static_cast<const T*>(weight);
    const T* pm = static_cast<const T*>(mean);
    const T* pr = static_cast<const T*>(rstd);
    T* pdx = static_cast<T*>(dx);
    T* pdw = static_cast<T*>(dweight);
    T* pdb = static_cast<T*>(dbias);
    // Rows are split over threads; each thread sums its rows' dweight and dbias
    // contributions into its own partial (no races), and the partials are added in
    // thread order at the end (deterministic for a given thread count).
    const int threads = rows * cols > (1 << 14) ? omp_get_max_threads() : 1;
    std::vector<T> partial(static_cast<size_t>(threads) * 2 * cols, T(0));
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      T* tdw = partial.data() + static_cast<size_t>(tid) * 2 * cols;
      T* tdb = tdw + cols;
      const int64_t begin = rows * tid / nt, end = rows * (tid + 1) / nt;
      for (int64_t r = begin; r < end; ++r) {
        const T* g = pdy + r * cols;
        const T* xr = px + r * cols;
        const T m = pm[r], rs = pr[r];
        // xhat = (x - mean) * rstd; dxhat = dy * w;
        // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        T mean_dxhat = 0, mean_dxhat_xhat = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const T xhat = (xr[c] - m) * rs;
          const T dxhat = g[c] * w[c];
          mean_dxhat += dxhat;
          mean_dxhat_xhat += dxhat * xhat;
          tdw[c] += g[c] * xhat;
          tdb[c] += g[c];
        }
        mean_dxhat /= static_cast<T>(cols);
        mean_dxhat_xhat /= static_cast<T>(cols);
        for (int64_t c = 0; c < cols; ++c) {
          const T xhat = (xr[c] - m) * rs;
          pdx[r * cols + c] = rs * (g[c] * w[c] - mean_dxhat - xhat * mean_dxhat_xhat);
        }
      }
    }
    for (int t = 0; t < threads; ++t)
      for (int64_t c = 0; c < cols; ++c) {
        pdw[c] += partial[static_cast<size_t>(t) * 2 * cols + c];
        pdb[c] += partial[static_cast<size_t>(t) * 2 * cols + cols + c];
      }
  });
}

// =====================================================================================
// The kernels' defaults: layernorm composed from the Backend primitives, for a backend
// with no implementation registered. tests/test_backend_defaults.cpp holds them equal to
// the CPU implementations above.
// =====================================================================================

// mean = sum(x) / C; rstd = 1 / sqrt(sum((x - mean)^2) / C + eps);
// y = (x - mean) * rstd * weight + bias.
static void layernorm_forward_default(Backend& b, DType dt, const void* x, const void* weight, const void* bias,
                                      void* y, void* mean, void* rstd, int64_t rows, int64_t cols, double eps) {
  if (rows * cols == 0) return;
  Scratch n(b, dt, 1), one(b, dt, 1), centered(b, dt, rows * cols);
  b.fill(dt, n.get(), 1, static_cast<double>(cols));
  b.fill(dt, one.get(), 1, 1.0);
  b.sum_rows(dt, x, mean, rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), mean, n.get(), mean);
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), x, mean, centered.get());
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), centered.get(), centered.get(), y);  // y as scratch
  b.sum_rows(dt, y, rstd, rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), rstd, n.get(), rstd);  // variance
  b.unary(UnaryOp::AddScalar, dt, rstd, rstd, rows, eps);
  b.unary(UnaryOp::Sqrt, dt, rstd, rstd, rows, 0.0);
  b.binary(BinaryOp::Div, dt, BroadcastPlan{{rows}, {0}, {1}}, one.get(), rstd, rstd);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), centered.get(), rstd, y);
  b.binary(BinaryOp::Mul, dt, per_col_plan(rows, cols), y, weight, y);
  b.binary(BinaryOp::Add, dt, per_col_plan(rows, cols), y, bias, y);
}

// The formula of layernorm's backward (see the op above), from the saved mean and rstd:
// xhat = (x - mean) * rstd, dxhat = dy * weight; dweight += sum over rows of dy * xhat and
// dbias += sum over rows of dy (each a (1, rows) @ (rows, C) product with ones, accumulated
// with beta = 1); dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
static void layernorm_backward_default(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                       const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                                       int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  const int64_t n = rows * cols;
  Scratch count(b, dt, 1), ones(b, dt, rows), xhat(b, dt, n), dxhat(b, dt, n), tmp(b, dt, n),
      mean_dxhat(b, dt, rows), mean_dxhat_xhat(b, dt, rows);
  b.fill(dt, count.get(), 1, static_cast<double>(cols));
  b.fill(dt, ones.get(), rows, 1.0);
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), x, mean, xhat.get());
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), xhat.get(), rstd, xhat.get());
  b.binary(BinaryOp::Mul, dt, per_col_plan(rows, cols), dy, weight, dxhat.get());
  // Column sums into dweight and dbias: ones (1 x rows) @ M (rows x C), C += the product.
  const GemmArgs colsum = contiguous_gemm_args(false, false, 1, cols, rows, /*batch=*/1, /*alpha=*/1.0, /*beta=*/1.0);
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dy, xhat.get(), tmp.get());
  b.gemm(dt, colsum, ones.get(), tmp.get(), dweight);
  b.gemm(dt, colsum, ones.get(), dy, dbias);
  b.sum_rows(dt, dxhat.get(), mean_dxhat.get(), rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), mean_dxhat.get(), count.get(), mean_dxhat.get());
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dxhat.get(), xhat.get(), tmp.get());
  b.sum_rows(dt, tmp.get(), mean_dxhat_xhat.get(), rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), mean_dxhat_xhat.get(), count.get(), mean_dxhat_xhat.get());
  b.binary(BinaryOp::Sub, dt, per_row_plan(rows, cols), dxhat.get(), mean_dxhat.get(), dx);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), xhat.get(), mean_dxhat_xhat.get(), tmp.get());
  b.binary(BinaryOp::Sub, dt, same_plan(rows, cols), dx, tmp.get(), dx);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), dx, rstd, dx);
}

}  // namespace runway
