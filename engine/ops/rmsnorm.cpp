// rmsnorm over the last dim, with weight (no bias, no mean subtracted).
//
// The worked example of docs/adding-an-op.md: the two fused kernels (engine/fused_kernel.h),
// the forward, the backward beside it with its formula, then the gradcheck rows, the plain
// reference kernel, the CPU implementations and the defaults composed from the Backend
// primitives. CUDA registers its implementations by name: cuda/ops/rmsnorm.cu.
// Map: docs/architecture.md.

#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "engine/autograd.h"
#include "engine/cpu_kernels.h"
#include "engine/fused_kernel.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/op_samples.h"

namespace runway {

using namespace op_helpers;
using cpu::dispatch_float;

// The kernels: a default and a CPU implementation each, defined below; other devices
// register theirs under the same names.
// x (rows, C), weight (C,) -> y (rows, C), rstd (rows,): y = x * rstd * weight with
// rstd = 1 / sqrt(mean(x^2) + eps) per row.
static void rmsnorm_forward_default(Backend& b, DType dt, const void* x, const void* weight, void* y, void* rstd,
                                    int64_t rows, int64_t cols, double eps);
static void cpu_rmsnorm_forward(Backend& b, DType dt, const void* x, const void* weight, void* y, void* rstd,
                                int64_t rows, int64_t cols, double eps);
static const FusedKernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>
    rmsnorm_forward_kernel("rmsnorm_forward", &rmsnorm_forward_default, &cpu_rmsnorm_forward);
// (dy, x, weight, rstd) -> dx (rows, C), written; dweight (C,), accumulated (+=). Uses x and
// the forward's rstd.
static void rmsnorm_backward_default(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                     const void* rstd, void* dx, void* dweight, int64_t rows, int64_t cols);
static void cpu_rmsnorm_backward(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                 const void* rstd, void* dx, void* dweight, int64_t rows, int64_t cols);
static const FusedKernel<DType, const void*, const void*, const void*, const void*, void*, void*, int64_t, int64_t>
    rmsnorm_backward_kernel("rmsnorm_backward", &rmsnorm_backward_default, &cpu_rmsnorm_backward);

static const OpName kRmsnorm = declare_op("rmsnorm");
Tensor rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
  require_same(x, weight, "rmsnorm");
  if (x.dim() < 1 || weight.shape() != Shape{x.size(-1)})
    throw Error(fmt::format("rmsnorm: x {} needs weight of shape ({},), got {}", x.shape_str(),
                            x.dim() ? x.size(-1) : 0, weight.shape_str()));
  if (!(eps > 0)) throw Error(fmt::format("rmsnorm: eps must be > 0, got {}", eps));
  const int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  Tensor xc = x.detach().contiguous(), w = weight.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd_t = Tensor::empty({rows}, x.dtype(), x.device());
  if (rows)
    rmsnorm_forward_kernel(be(x), x.dtype(), xc.raw_data(), w.raw_data(), out.raw_data(), rstd_t.raw_data(), rows,
                           cols, eps);
  // x (rows, C), weight (C,); saved: rstd (rows,) = 1 / sqrt(mean(x^2) + eps). Per row, with
  // xhat = x * rstd and dxhat = g * weight (y = xhat * weight):
  //   d rstd / dx = -rstd^3 * x / C, so
  //   dx = rstd * dxhat - x * rstd^3 * mean(dxhat * x)
  //      = rstd * (dxhat - xhat * mean(dxhat * xhat))   (layernorm's, less its mean(dxhat) term)
  //   dweight = sum over rows of g * xhat
  // (the kernels: cpu_rmsnorm_backward and rmsnorm_backward_default, below).
  return record(kRmsnorm, out, {x, weight}, [xc, w, rstd_t, rows, cols](const Tensor& g) -> Grads {
    Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    Tensor dw = Tensor::zeros({cols}, xc.dtype(), xc.device());
    if (rows)
      rmsnorm_backward_kernel(be(xc), xc.dtype(), gc.raw_data(), xc.raw_data(), w.raw_data(), rstd_t.raw_data(),
                              dx.raw_data(), dw.raw_data(), rows, cols);
    return {dx, dw};
  });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> rmsnorm_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("rmsnorm", "rmsnorm over the last dim with weight: x * rstd * weight",
             [](const std::vector<Tensor>& x) { return rmsnorm(x[0], x[1]); },
             [] {
               // 129 rows of 131 = 16899 > 2^14: the threaded path, 129 rows split unevenly.
               return Samples{{"(2,3,5)", {rnd({2, 3, 5}, 91, -2, 2), rnd({5}, 92, 0.5, 1.5)}, {}},
                              {"(4,2)", {rnd({4, 2}, 93, -2, 2), rnd({2}, 94, -1.5, 1.5)}, {}},
                              {"one row (1,4)", {rnd({1, 4}, 95, -2, 2), rnd({4}, 96, 0.5, 1.5)}, {}},
                              threaded("(3,43,131)", {rnd({3, 43, 131}, 97, -2, 2), rnd({131}, 98, 0.5, 1.5)})};
             }));
  return t;
}

// =====================================================================================
// Reference CPU kernels (declared where they are used, in tests/test_threaded_kernels.cpp):
// plain loops in double, the math of the tuned kernels below; that test holds the two equal.
// =====================================================================================

namespace cpu::reference {

void rmsnorm_forward(const double* x, const double* weight, double* y, double* rstd, int64_t rows, int64_t cols,
                     double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = x + r * cols;
    double mean_sq = 0;
    for (int64_t c = 0; c < cols; ++c) mean_sq += xr[c] * xr[c];
    mean_sq /= static_cast<double>(cols);
    rstd[r] = 1.0 / std::sqrt(mean_sq + eps);
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = xr[c] * rstd[r] * weight[c];
  }
}

void rmsnorm_backward(const double* dy, const double* x, const double* weight, const double* rstd, double* dx,
                      double* dweight, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    double mean_dxhat_xhat = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = x[o + c] * rstd[r], dxhat = dy[o + c] * weight[c];
      mean_dxhat_xhat += dxhat * xhat / static_cast<double>(cols);
      dweight[c] += dy[o + c] * xhat;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = x[o + c] * rstd[r];
      dx[o + c] = rstd[r] * (dy[o + c] * weight[c] - xhat * mean_dxhat_xhat);
    }
  }
}

}  // namespace cpu::reference

// =====================================================================================
// CPU implementations of the kernels, threaded over rows like layernorm's. They use no
// backend state: the Backend& is there because every implementation takes one.
// =====================================================================================

static void cpu_rmsnorm_forward(Backend&, DType dt, const void* x, const void* weight, void* y, void* rstd,
                                int64_t rows, int64_t cols, double eps) {
  dispatch_float(dt, "rmsnorm", [&](auto t) {
    using T = decltype(t);
    const T* px = static_cast<const T*>(x);
    const T* w = static_cast<const T*>(weight);
    T* py = static_cast<T*>(y);
    T* pr = static_cast<T*>(rstd);
#pragma omp parallel for if (rows * cols > 1 << 14) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * cols;
      // Eigen's reduction vectorises (a plain `s += x[c] * x[c]` loop is one serial chain).
      const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> xa(xr, cols);
      const T mean_sq = xa.square().sum() / static_cast<T>(cols);
      const T rs = T(1) / std::sqrt(mean_sq + static_cast<T>(eps));
      for (int64_t c = 0; c < cols; ++c) py[r * cols + c] = xr[c] * rs * w[c];
      pr[r] = rs;
    }
  });
}

static void cpu_rmsnorm_backward(Backend&, DType dt, const void* dy, const void* x, const void* weight,
                                 const void* rstd, void* dx, void* dweight, int64_t rows, int64_t cols) {
  dispatch_float(dt, "rmsnorm_backward", [&](auto t) {
    using T = decltype(t);
    const T* pdy = static_cast<const T*>(dy);
    const T* px = static_cast<const T*>(x);
    const T* w = static_cast<const T*>(weight);
    const T* pr = static_cast<const T*>(rstd);
    T* pdx = static_cast<T*>(dx);
    T* pdw = static_cast<T*>(dweight);
    // Rows are split over threads; each thread sums its rows' dweight contributions into
    // its own partial (no races), and the partials are added in thread order at the end
    // (deterministic for a given thread count).
    const int threads = rows * cols > (1 << 14) ? omp_get_max_threads() : 1;
    std::vector<T> partial(static_cast<size_t>(threads) * cols, T(0));
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      T* tdw = partial.data() + static_cast<size_t>(tid) * cols;
      const int64_t begin = rows * tid / nt, end = rows * (tid + 1) / nt;
      for (int64_t r = begin; r < end; ++r) {
        const T* g = pdy + r * cols;
        const T* xr = px + r * cols;
        const T rs = pr[r];
        // xhat = x * rstd; dxhat = dy * w; dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
        T mean_dxhat_xhat = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const T xhat = xr[c] * rs;
          mean_dxhat_xhat += g[c] * w[c] * xhat;
          tdw[c] += g[c] * xhat;
        }
        mean_dxhat_xhat /= static_cast<T>(cols);
        for (int64_t c = 0; c < cols; ++c) pdx[r * cols + c] = rs * (g[c] * w[c] - xr[c] * rs * mean_dxhat_xhat);
      }
    }
    for (int t = 0; t < threads; ++t)
      for (int64_t c = 0; c < cols; ++c) pdw[c] += partial[static_cast<size_t>(t) * cols + c];
  });
}

// =====================================================================================
// The kernels' defaults: rmsnorm composed from the Backend primitives, for a backend with
// no implementation registered. tests/test_backend_defaults.cpp holds them equal to the
// CPU implementations above.
// =====================================================================================

// rstd = 1 / sqrt(sum(x^2) / C + eps); y = x * rstd * weight.
static void rmsnorm_forward_default(Backend& b, DType dt, const void* x, const void* weight, void* y, void* rstd,
                                    int64_t rows, int64_t cols, double eps) {
  if (rows * cols == 0) return;
  Scratch n(b, dt, 1), one(b, dt, 1);
  b.fill(dt, n.get(), 1, static_cast<double>(cols));
  b.fill(dt, one.get(), 1, 1.0);
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), x, x, y);  // y as scratch: x^2
  b.sum_rows(dt, y, rstd, rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), rstd, n.get(), rstd);  // mean(x^2)
  b.unary(UnaryOp::AddScalar, dt, rstd, rstd, rows, eps);
  b.unary(UnaryOp::Sqrt, dt, rstd, rstd, rows, 0.0);
  b.binary(BinaryOp::Div, dt, BroadcastPlan{{rows}, {0}, {1}}, one.get(), rstd, rstd);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), x, rstd, y);
  b.binary(BinaryOp::Mul, dt, per_col_plan(rows, cols), y, weight, y);
}

// The formula of rmsnorm's backward (see the op above), from the saved rstd:
// xhat = x * rstd, dxhat = dy * weight; dweight += sum over rows of dy * xhat (a
// (1, rows) @ (rows, C) product with ones, accumulated with beta = 1);
// dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
static void rmsnorm_backward_default(Backend& b, DType dt, const void* dy, const void* x, const void* weight,
                                     const void* rstd, void* dx, void* dweight, int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  const int64_t n = rows * cols;
  Scratch count(b, dt, 1), ones(b, dt, rows), xhat(b, dt, n), dxhat(b, dt, n), tmp(b, dt, n),
      mean_dxhat_xhat(b, dt, rows);
  b.fill(dt, count.get(), 1, static_cast<double>(cols));
  b.fill(dt, ones.get(), rows, 1.0);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), x, rstd, xhat.get());
  b.binary(BinaryOp::Mul, dt, per_col_plan(rows, cols), dy, weight, dxhat.get());
  // Column sums into dweight: ones (1 x rows) @ (dy * xhat) (rows x C), C += the product.
  const GemmArgs colsum = contiguous_gemm_args(false, false, 1, cols, rows, /*batch=*/1, /*alpha=*/1.0, /*beta=*/1.0);
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dy, xhat.get(), tmp.get());
  b.gemm(dt, colsum, ones.get(), tmp.get(), dweight);
  b.binary(BinaryOp::Mul, dt, same_plan(rows, cols), dxhat.get(), xhat.get(), tmp.get());
  b.sum_rows(dt, tmp.get(), mean_dxhat_xhat.get(), rows, cols);
  b.binary(BinaryOp::Div, dt, scalar_plan(rows), mean_dxhat_xhat.get(), count.get(), mean_dxhat_xhat.get());
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), xhat.get(), mean_dxhat_xhat.get(), tmp.get());
  b.binary(BinaryOp::Sub, dt, same_plan(rows, cols), dxhat.get(), tmp.get(), dx);
  b.binary(BinaryOp::Mul, dt, per_row_plan(rows, cols), dx, rstd, dx);
}

}  // namespace runway
