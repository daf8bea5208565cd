// Linear algebra: matmul ((..., M, K) @ (..., K, N), batch dims broadcast) and linear
// (x @ W + b in one op).
//
// Per op: the forward, the backward beside it with its formula, then the family's
// gradcheck rows and its CPU kernels (CpuBackend::gemm and the fused kernel gemm_group,
// engine/fused_kernel.h: OpenBLAS, one single-threaded product per thread's share). CUDA:
// cuda/ops/linear.cu (cuBLAS).
// Map: docs/architecture.md.

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
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
// matmul: (..., M, K) @ (..., K, N) -> (..., M, N) through the backend's gemm.
// =====================================================================================

namespace {

// How one gemm operand is laid out in memory: a base pointer, whether its matrices
// are stored transposed, the leading dimension, and a single stride between batch
// items (0 when shared). Anything else is copied to contiguous first.
struct GemmOperand {
  Tensor keep_alive;
  const void* data;
  bool trans;
  int64_t ld;
  int64_t batch_stride;
};

// The batch dims (size-1 dims ignored) as one stride between matrices, when they
// allow it: all broadcast (stride 0) or nested back to back.
bool single_batch_stride(const Shape& shape, const Shape& strides, int64_t nbatch_dims,
                         int64_t* stride) {
  bool found = false;
  int64_t expected = 0;
  *stride = 0;
  for (int64_t d = nbatch_dims - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (!found) {
      *stride = strides[d];
      found = true;
    } else if (strides[d] != expected) {
      return false;
    }
    expected = strides[d] * shape[d];
  }
  return true;
}

GemmOperand gemm_operand(const Tensor& x, const Shape& batch_shape) {
  Shape full = batch_shape;
  full.push_back(x.size(-2));
  full.push_back(x.size(-1));
  Tensor v = x.shape() == full ? x : make_view(x, full, broadcast_strides(x, full), x.offset());
  const int64_t nb = static_cast<int64_t>(batch_shape.size());
  const int64_t rows = v.size(-2), cols = v.size(-1);
  const int64_t rs = v.strides()[nb], cs = v.strides()[nb + 1];
  int64_t bstride = 0;
  if (single_batch_stride(v.shape(), v.strides(), nb, &bstride)) {
    // Row-major as stored, or stored transposed (a transpose view): no copy.
    if ((cols == 1 || cs == 1) && (rows == 1 || rs >= cols))
      return {v, v.raw_data(), false, rows == 1 ? std::max<int64_t>(cols, 1) : rs, bstride};
    if ((rows == 1 || rs == 1) && (cols == 1 || cs >= rows))
      return {v, v.raw_data(), true, cols == 1 ? std::max<int64_t>(rows, 1) : cs, bstride};
  }
  Tensor c = v.detach().contiguous();
  return {c, c.raw_data(), false, std::max<int64_t>(cols, 1), rows * cols};
}

Tensor matmul_raw(const Tensor& a, const Tensor& b) {
  require_same(a, b, "matmul");
  if (a.dim() < 2 || b.dim() < 2 || a.size(-1) != b.size(-2))
    throw Error(fmt::format("matmul: shapes {} and {} are not (..., M, K) @ (..., K, N)",
                            a.shape_str(), b.shape_str()));
  const Shape batch = broadcast_shapes(Shape(a.shape().begin(), a.shape().end() - 2),
                                       Shape(b.shape().begin(), b.shape().end() - 2), "matmul");
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  const int64_t nbatch = shape_numel(batch);
  if (out.numel() == 0) return out;
  if (k == 0) return Tensor::zeros(out_shape, a.dtype(), a.device());
  GemmOperand A = gemm_operand(a, batch), B = gemm_operand(b, batch);
  GemmArgs args;
  args.trans_a = A.trans;
  args.trans_b = B.trans;
  args.m = m;
  args.n = n;
  args.k = k;
  args.lda = A.ld;
  args.ldb = B.ld;
  args.ldc = n;
  args.stride_a = A.batch_stride;
  args.stride_b = B.batch_stride;
  args.stride_c = m * n;
  args.batch = nbatch;
  // A shared right operand and a row-contiguous left one: fold the batch into M so
  // that BLAS sees one tall gemm (the common x @ W of a linear layer).
  if (nbatch > 1 && B.batch_stride == 0 && !A.trans && A.batch_stride == m * A.ld && A.ld == k) {
    args.m = m * nbatch;
    args.batch = 1;
  }
  be(a).gemm(a.dtype(), args, A.data, B.data, out.raw_data());
  return out;
}

}  // namespace

static const OpName kMatmul = declare_op("matmul");
Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out = matmul_raw(a, b);
  // dA = dC B^T, dB = A^T dC (summed over broadcast batch dims by the engine).
  // A 2-D B shared by a batched, row-major A (x @ W, logits = h @ wte^T): dB is one
  // gemm over all rows, (K, rows) @ (rows, N), instead of a (batch, K, N) product that
  // the engine would then sum over the batch.
  return record(kMatmul, out, {a, b},
                [a = a.detach(), b = b.detach(), a_grad = a.requires_grad(),
                 b_grad = b.requires_grad()](const Tensor& g) -> Grads {
                  Tensor da = a_grad ? matmul_raw(g, transpose(b, -1, -2)) : Tensor();
                  if (!b_grad) return {da, Tensor()};
                  if (b.dim() == 2 && a.dim() > 2 && a.is_contiguous()) {
                    const int64_t k = a.size(-1), n = g.size(-1);
                    Tensor a2 = reshape(a, {a.numel() / k, k}), g2 = reshape(g.contiguous(), {g.numel() / n, n});
                    return {da, matmul_raw(transpose(a2, 0, 1), g2)};
                  }
                  return {da, matmul_raw(transpose(a, -1, -2), g)};
                });
}

// =====================================================================================
// linear: x (..., K) @ weight (K, N) + bias (N,), one gemm with the bias as its
// starting value (beta = 1), and a backward of three gemms over all rows at once:
//   dx = g W^T,  dW = x^T g,  db = 1^T g
// (the same math as add(matmul(x, W), b), without the batched dW that the engine would
// sum over the batch and the transposing copy that summing the bias gradient costs).
// =====================================================================================

namespace {
// C (m x n) = op(A) op(B) (+ C when accumulate), all row-major, as one backend product.
GemmCall gemm_call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda, const void* b,
                   int64_t ldb, void* c, bool accumulate) {
  GemmCall call;
  call.args.trans_a = ta;
  call.args.trans_b = tb;
  call.args.m = m;
  call.args.n = n;
  call.args.k = k;
  call.args.lda = lda;
  call.args.ldb = ldb;
  call.args.ldc = n;
  call.args.beta = accumulate ? 1.0 : 0.0;
  call.a = a;
  call.b = b;
  call.c = c;
  return call;
}
}  // namespace

// The fused kernel gemm_group (engine/fused_kernel.h): independent products (no call reads
// what another writes), in any order. The CPU implementation (below) runs them in one
// parallel region, one wake-up of its threads instead of one per product; the default
// runs them one by one. CUDA registers none: it runs the default (one cuBLAS call each).
static void gemm_group_default(Backend& b, DType dt, const std::vector<GemmCall>& calls) {
  for (const GemmCall& c : calls) b.gemm(dt, c.args, c.a, c.b, c.c);
}
static void cpu_gemm_group(Backend&, DType dt, const std::vector<GemmCall>& calls);
static const FusedKernel<DType, const std::vector<GemmCall>&> gemm_group_kernel("gemm_group", &gemm_group_default,
                                                                                &cpu_gemm_group);

static const OpName kLinear = declare_op("linear");
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  require_same(x, weight, "linear");
  const bool has_bias = bias.defined();
  if (has_bias) require_same(x, bias, "linear");
  if (x.dim() < 1 || weight.dim() != 2 || x.size(-1) != weight.size(0) ||
      (has_bias && bias.shape() != Shape{weight.size(1)}))
    throw Error(fmt::format("linear: x {} needs weight (K, N) with K = {} and bias (N,), got weight {} and bias {}",
                            x.shape_str(), x.dim() ? x.size(-1) : 0, weight.shape_str(),
                            has_bias ? bias.shape_str() : "none"));
  const int64_t k = weight.size(0), n = weight.size(1), rows = k ? x.numel() / k : 0;
  Shape out_shape = x.shape();
  out_shape.back() = n;
  Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (rows > 0 && n > 0) {
    // out (rows, N) = bias (every row starts as it) + x (rows, K) @ W (K, N)
    const GemmOperand W = gemm_operand(weight.detach(), {});
    Tensor bc = has_bias ? bias.detach().contiguous() : Tensor();
    GemmCall call = gemm_call(false, W.trans, rows, n, k, xc.raw_data(), k, W.data, W.ld, out.raw_data(), false);
    if (has_bias) call.args.row_init = bc.raw_data();
    be(x).gemm(x.dtype(), call.args, call.a, call.b, call.c);
  }
  const bool x_grad = x.requires_grad(), w_grad = weight.requires_grad(), b_grad = has_bias && bias.requires_grad();
  std::vector<Tensor> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  return record(kLinear, out, inputs,
                [xc, w = weight.detach(), has_bias, x_grad, w_grad, b_grad, rows, k, n](const Tensor& g) -> Grads {
                  Tensor gc = g.contiguous();
                  Grads grads(has_bias ? 3 : 2);
                  if (rows == 0 || n == 0 || k == 0) {  // empty products: zero gradients
                    grads[0] = x_grad ? Tensor::zeros(xc.shape(), xc.dtype(), xc.device()) : Tensor();
                    grads[1] = w_grad ? Tensor::zeros({k, n}, xc.dtype(), xc.device()) : Tensor();
                    if (has_bias) grads[2] = b_grad ? sum(reshape(gc, {rows, n}), {0}) : Tensor();
                    return grads;
                  }
                  // dx, dW and db read g and write their own buffers: one group (on the
                  // CPU, one parallel region instead of three).
                  std::vector<GemmCall> calls;
                  Tensor ones;
                  if (x_grad) {  // dx (rows, K) = g (rows, N) @ W^T
                    grads[0] = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
                    const GemmOperand W = gemm_operand(w, {});
                    calls.push_back(gemm_call(false, !W.trans, rows, k, n, gc.raw_data(), n, W.data, W.ld,
                                              grads[0].raw_data(), false));
                  }
                  if (w_grad) {  // dW (K, N) = x^T (K, rows) @ g (rows, N)
                    grads[1] = Tensor::empty({k, n}, xc.dtype(), xc.device());
                    calls.push_back(gemm_call(true, false, k, n, rows, xc.raw_data(), k, gc.raw_data(), n,
                                              grads[1].raw_data(), false));
                  }
                  if (b_grad) {  // db (1, N) = 1^T (1, rows) @ g (rows, N): column sums as a gemm
                    ones = Tensor::ones({rows}, xc.dtype(), xc.device());
                    grads[2] = Tensor::empty({n}, xc.dtype(), xc.device());
                    calls.push_back(gemm_call(false, false, 1, n, rows, ones.raw_data(), rows, gc.raw_data(), n,
                                              grads[2].raw_data(), false));
                  }
                  gemm_group_kernel(be(xc), xc.dtype(), calls);
                  return grads;
                });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> linear_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("matmul", "(..., M, K) @ (..., K, N), batch broadcast, transposed views", binary_fn(matmul), [] {
               return Samples{
                   {"(3,4)@(4,5)", {rnd({3, 4}, 21), rnd({4, 5}, 22)}, {}},
                   {"(1,1)@(1,1)", {rnd({1, 1}, 23), rnd({1, 1}, 24)}, {}},
                   {"batched (2,3,4)@(2,4,2)", {rnd({2, 3, 4}, 25), rnd({2, 4, 2}, 26)}, {}},
                   {"shared weight (2,3,4)@(4,2)", {rnd({2, 3, 4}, 27), rnd({4, 2}, 28)}, {}},
                   {"broadcast batch (2,1,3,4)@(3,4,2)", {rnd({2, 1, 3, 4}, 29), rnd({3, 4, 2}, 30)}, {}},
                   threaded("(129,67)@(67,131)", {rnd({129, 67}, 35), rnd({67, 131}, 36)}),
               };
             }));
  t.push_back(op_entry("matmul_transposed", "a @ b^T through a transpose view (gemm trans flag)",
             [](const std::vector<Tensor>& x) { return matmul(x[0], transpose(x[1], -1, -2)); },
             [] {
               return Samples{{"(2,3,4)@(2,5,4)^T", {rnd({2, 3, 4}, 31), rnd({2, 5, 4}, 32)}, {}},
                              {"(3,4)@(5,4)^T", {rnd({3, 4}, 33), rnd({5, 4}, 34)}, {}},
                              threaded("(3,43,67)@(3,131,67)^T", {rnd({3, 43, 67}, 37), rnd({3, 131, 67}, 38)})};
             },
             true));
  t.push_back(op_entry("linear", "x @ W + b in one op (gemm with the bias as start value)",
                  [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); }, [] {
                    return Samples{
                        {"(3,4) W(4,5) b(5)", {rnd({3, 4}, 95), rnd({4, 5}, 96), rnd({5}, 97)}},
                        {"(2,3,4) W(4,2) b(2)", {rnd({2, 3, 4}, 98), rnd({4, 2}, 99), rnd({2}, 100)}},
                        {"(2,3,4) W^T view, no bias", {rnd({2, 3, 4}, 101), rnd({5, 4}, 102)}, {},
                         [](const std::vector<Tensor>& x) { return linear(x[0], transpose(x[1], 0, 1), Tensor()); }},
                        threaded("(3,43,67) W(67,131) b(131)", {rnd({3, 43, 67}, 103), rnd({67, 131}, 104), rnd({131}, 105)}),
                    };
                  }));
  return t;
}

// =====================================================================================
// Reference CPU kernel (engine/cpu_reference.h): the product as a plain triple loop in
// double; tests/test_threaded_kernels.cpp holds the threaded gemm_group below equal to it.
// =====================================================================================

void cpu::reference::gemm(const GemmArgs& g, const double* a, const double* b, double* c) {
  const double* init = static_cast<const double*>(g.row_init);
  for (int64_t i = 0; i < g.batch; ++i)
    for (int64_t r = 0; r < g.m; ++r)
      for (int64_t col = 0; col < g.n; ++col) {
        double acc = 0;
        for (int64_t j = 0; j < g.k; ++j)
          acc += a[i * g.stride_a + (g.trans_a ? j * g.lda + r : r * g.lda + j)] *
                 b[i * g.stride_b + (g.trans_b ? col * g.ldb + j : j * g.ldb + col)];
        double& out = c[i * g.stride_c + r * g.ldc + col];
        // C = row_init + alpha op(A) op(B), or alpha op(A) op(B) + beta C (C unread when beta is 0)
        out = (init ? init[col] : g.beta == 0.0 ? 0.0 : g.beta * out) + g.alpha * acc;
      }
}

// =====================================================================================
// CPU kernels (CpuBackend, engine/cpu_backend.h).
// =====================================================================================

namespace {

// One row-major gemm through OpenBLAS in the calling thread.
template <typename T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, double beta, T* c, int64_t ldc) {
  const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, static_cast<float>(alpha), a, lda, b, ldb,
                static_cast<float>(beta), c, ldc);
  else
    cblas_dgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

void check_row_init(const GemmArgs& g) {
  if (g.row_init && (g.ldc != g.n || (g.batch > 1 && g.stride_c != g.m * g.n)))
    throw Error(fmt::format("gemm: row_init needs a contiguous C (ldc = n = {}, stride_c = m n = {}); got "
                            "ldc {}, stride_c {}", g.n, g.m * g.n, g.ldc, g.stride_c));
}

GemmArgs contiguous_gemm_args(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t batch,
                              double alpha, double beta) {
  GemmArgs g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = trans_a ? m : k;
  g.ldb = trans_b ? k : n;
  g.ldc = n;
  g.stride_a = m * k;
  g.stride_b = k * n;
  g.stride_c = m * n;
  g.batch = batch;
  g.alpha = alpha;
  g.beta = beta;
  return g;
}

// OpenBLAS runs single-threaded (see the constructor); the engine splits each product
// over its OpenMP threads itself: batch items when there are enough of them, else the
// rows of C (or its columns when C is wide and short), one single-threaded sgemm per
// part. One thread pool for the whole engine: OpenBLAS's own pool spins (sched_yield)
// between calls and fought the OpenMP threads of the elementwise kernels for the two
// cores; single-threaded OpenBLAS can also be called inside OpenMP regions.
void CpuBackend::gemm(DType dt, const GemmArgs& g, const void* a, const void* b, void* c) {
  cpu_gemm_group(*this, dt, {GemmCall{g, a, b, c}});
}

// All the products in one parallel region: each thread does its share of each in turn
// (a region costs a thread wake-up, ~60 us on a 2-vCPU VM under the PASSIVE wait policy,
// as much as a small product itself). Products too small to split go whole to one
// thread, taking turns. (gemm_group's CPU implementation.)
static void cpu_gemm_group(Backend&, DType dt, const std::vector<GemmCall>& calls) {
  for (const GemmCall& call : calls) check_row_init(call.args);
  dispatch_float(dt, "gemm", [&](auto t) {
    using T = decltype(t);
    auto work_of = [](const GemmArgs& g) {
      return static_cast<double>(g.m) * static_cast<double>(g.n) *
             static_cast<double>(std::max<int64_t>(g.k, 1)) * static_cast<double>(g.batch);
    };
    // C[r0:r1, c0:c1] of batch item i of one call.
    auto part = [](const GemmCall& call, int64_t i, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      const GemmArgs& g = call.args;
      const T* ai = static_cast<const T*>(call.a) + i * g.stride_a + (g.trans_a ? r0 : r0 * g.lda);
      const T* bi = static_cast<const T*>(call.b) + i * g.stride_b + (g.trans_b ? c0 * g.ldb : c0);
      T* ci = static_cast<T*>(call.c) + i * g.stride_c + r0 * g.ldc + c0;
      double beta = g.beta;
      if (g.row_init) {
        const T* init = static_cast<const T*>(g.row_init) + c0;
        for (int64_t r = 0; r < r1 - r0; ++r) std::copy(init, init + (c1 - c0), ci + r * g.ldc);
        beta = 1.0;
      }
      if (g.k > 0) {
        blas_gemm<T>(g.trans_a, g.trans_b, r1 - r0, c1 - c0, g.k, g.alpha, ai, g.lda, bi, g.ldb, beta, ci, g.ldc);
      } else if (!g.row_init) {  // op(A) op(B) is all zeros: C = beta C
        for (int64_t r = 0; r < r1 - r0; ++r)
          for (int64_t col = 0; col < c1 - c0; ++col)
            ci[r * g.ldc + col] = beta == 0.0 ? T(0) : static_cast<T>(beta) * ci[r * g.ldc + col];
      }
    };
    // Thread `tid` of `nt`: its share of call number `index`.
    auto share = [&](const GemmCall& call, size_t index, int64_t tid, int64_t nt) {
      const GemmArgs& g = call.args;
      if (g.m == 0 || g.n == 0) return;
      if (nt == 1 || work_of(g) < 1 << 18) {
        if (static_cast<int64_t>(index % static_cast<size_t>(nt)) == tid)
          for (int64_t i = 0; i < g.batch; ++i) part(call, i, 0, g.m, 0, g.n);
      } else if (g.batch >= nt) {
        for (int64_t i = g.batch * tid / nt; i < g.batch * (tid + 1) / nt; ++i) part(call, i, 0, g.m, 0, g.n);
      } else {
        // Split the longer side of C into nt parts (rows in multiples of 16, columns
        // of 64, so the kernels' register blocks stay whole).
        const bool by_rows = g.m >= g.n;
        const int64_t len = by_rows ? g.m : g.n, align = by_rows ? 16 : 64;
        auto cut = [&](int64_t k) { return k == nt ? len : std::min(len, (len * k / nt + align / 2) / align * align); };
        const int64_t lo = cut(tid), hi = cut(tid + 1);
        if (hi > lo)
          for (int64_t i = 0; i < g.batch; ++i) {
            if (by_rows) part(call, i, lo, hi, 0, g.n);
            else part(call, i, 0, g.m, lo, hi);
          }
      }
    };
    double total = 0;
    for (const GemmCall& call : calls) total += work_of(call.args);
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads == 1 || total < 1 << 18) {
      for (size_t j = 0; j < calls.size(); ++j) share(calls[j], j, 0, 1);
      return;
    }
#pragma omp parallel num_threads(threads)
    {
      const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
      for (size_t j = 0; j < calls.size(); ++j) share(calls[j], j, tid, nt);
    }
  });
}

}  // namespace runway
