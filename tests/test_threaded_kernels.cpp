// The CPU backend's threaded kernels against plain single-threaded double loops (the
// reference kernels of engine/cpu_reference.h, defined beside each tuned kernel in
// engine/ops/<family>.cpp; attention's are written here), at sizes above each kernel's
// threading threshold, with an odd number of rows and three OpenMP threads, so the rows split unevenly (a thread-partial or split bug that
// the small gradcheck samples never reach shows up here). Thresholds, from
// engine/ops/*.cpp and engine/ops/attention_cpu_fast.cpp:
//   unary (map_unary) n > 2^15; float32 GELU n > 2^14; binary / strided copies (for_each_run)
//   numel > 2^16; sum_rows > 2^16; softmax, its backward, layernorm, rmsnorm, cross-entropy
//   rows * cols > 2^14; rope rows * T * D > 2^14; qkv_to_heads B T 3C > 2^14;
//   gemm groups total m n k > 2^18; AdamW (nn/optim.cpp) total elements > 2^15;
//   attention always (loops over batch and (batch, head)).
#include <catch2/catch.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu_reference.h"
#include "engine/fused_kernel.h"
#include "engine/op_table.h"
#include "engine/ops.h"
#include "engine/ops/attention.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "nn/module.h"
#include "nn/optim.h"

using namespace runway;

// References declared here, where they are used, rather than in engine/cpu_reference.h (a
// new fused op needs no engine header); defined beside the CPU implementation.
namespace runway::cpu::reference {
// engine/ops/rmsnorm.cpp: the kernels rmsnorm_forward and rmsnorm_backward (which
// accumulates into dweight).
void rmsnorm_forward(const double* x, const double* weight, double* y, double* rstd, int64_t rows, int64_t cols,
                     double eps);
void rmsnorm_backward(const double* dy, const double* x, const double* weight, const double* rstd, double* dx,
                      double* dweight, int64_t rows, int64_t cols);
}  // namespace runway::cpu::reference

namespace {

constexpr int kThreads = 3;
// 131 rows of 129: rows * cols = 16899 > 2^14, and 131 rows split 43/44/44 over three
// threads; 257 x 259 = 66563 > 2^16 for the kernels with the higher threshold (257 rows:
// 85/86/86).
constexpr int64_t kRows = 131, kCols = 129;
constexpr int64_t kBigRows = 257, kBigCols = 259;
static_assert(kRows * kCols > (1 << 14) && kBigRows * kBigCols > (1 << 16), "sizes must take the threaded paths");

// Runs one test with `n` OpenMP threads (restored afterwards), and REQUIREs that a
// parallel region really gets them: on a machine with fewer cores the runtime still
// starts n threads unless OMP_DYNAMIC lets it shrink teams.
struct ThreadCount {
  int saved;
  explicit ThreadCount(int n) : saved(omp_get_max_threads()) {
    omp_set_num_threads(n);
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
      team = omp_get_num_threads();
    }
    REQUIRE(team == n);
  }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

std::vector<double> uniform(int64_t n, double lo, double hi, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> v(n);
  for (double& x : v) x = gen.uniform(lo, hi);
  return v;
}

template <typename T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// max over i of |got[i] - want[i]| / (scale + |want[i]|).
template <typename T>
double worst(const std::vector<T>& got, const std::vector<double>& want, double scale = 1.0) {
  REQUIRE(got.size() == want.size());
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(static_cast<double>(got[i]) - want[i]) / (scale + std::abs(want[i]));
    if (!(e <= w)) w = std::isnan(e) ? INFINITY : e;
  }
  return w;
}

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, float> ? DType::Float32 : DType::Float64;
}
// Tolerance relative to 1 + |value| for a few roundings in T.
template <typename T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-13;
}

Backend& cpu_backend() { return backend_for(Device::CPU); }

// The CPU implementations of the fused kernels registered by name (engine/fused_kernel.h),
// found by name and signature (op_table() links every op family's file, and so its
// kernels, into this program).
template <typename... Args>
void (*cpu_kernel(const char* name))(Backend&, Args...) {
  (void)op_table();
  const auto fn = find_fused_kernel<Args...>(name, Device::CPU);
  REQUIRE(fn != nullptr);
  return fn;
}
// ---- the kernels' CPU implementations (begin)
auto rmsnorm_forward_kernel() {
  return cpu_kernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>(
      "rmsnorm_forward");
}
auto rmsnorm_backward_kernel() {
  return cpu_kernel<DType, const void*, const void*, const void*, const void*, void*, void*, int64_t, int64_t>(
      "rmsnorm_backward");
}
auto layernorm_forward_kernel() {
  return cpu_kernel<DType, const void*, const void*, const void*, void*, void*, void*, int64_t, int64_t, double>(
      "layernorm_forward");
}
auto layernorm_backward_kernel() {
  return cpu_kernel<DType, const void*, const void*, const void*, const void*, const void*, void*, void*, void*,
                    int64_t, int64_t>(
      "layernorm_backward");
}
auto softmax_rows_kernel() { return cpu_kernel<DType, const void*, void*, int64_t, int64_t, bool>("softmax_rows"); }
auto softmax_backward_rows_kernel() {
  return cpu_kernel<DType, const void*, const void*, void*, int64_t, int64_t, bool>(
      "softmax_backward_rows");
}
auto cross_entropy_forward_kernel() {
  return cpu_kernel<DType, const void*, const int64_t*, void*, void*, int64_t, int64_t, int64_t>(
      "cross_entropy_forward");
}
auto cross_entropy_backward_kernel() {
  return cpu_kernel<DType, const void*, const int64_t*, const void*, void*, int64_t, int64_t, int64_t, double>(
      "cross_entropy_backward");
}
auto qkv_to_heads_kernel() {
  return cpu_kernel<DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double>(
      "qkv_to_heads");
}
auto heads_to_qkv_kernel() {
  return cpu_kernel<DType, void*, void*, int64_t, int64_t, int64_t, int64_t, double>(
      "heads_to_qkv");
}
auto gelu_forward_kernel() { return cpu_kernel<DType, const void*, void*, void*, int64_t>("gelu_forward"); }
auto gemm_group_kernel() { return cpu_kernel<DType, const std::vector<GemmCall>&>("gemm_group"); }
// ---- (end)

// ---- elementwise ----------------------------------------------------------------------

// The references: engine/cpu_reference.h, defined beside each tuned kernel.
namespace ref = runway::cpu::reference;

template <typename T>
void check_unary() {
  // 40001 elements: above 2^15 (map_unary) and 2^14 (float32 GELU), not a multiple of
  // the GELU block (512) nor of the thread count.
  const int64_t n = 40001;
  const std::vector<double> signed_x = uniform(n, -3, 3, 11), positive_x = uniform(n, 0.2, 3, 12);
  const std::vector<std::pair<UnaryOp, const char*>> ops{
      {UnaryOp::Neg, "neg"},         {UnaryOp::Exp, "exp"},         {UnaryOp::Log, "log"},
      {UnaryOp::Sqrt, "sqrt"},       {UnaryOp::Tanh, "tanh"},       {UnaryOp::Sigmoid, "sigmoid"},
      {UnaryOp::Relu, "relu"},       {UnaryOp::ReluGrad, "relu'"},  {UnaryOp::Gelu, "gelu"},
      {UnaryOp::GeluGrad, "gelu'"},  {UnaryOp::AddScalar, "+p"},    {UnaryOp::MulScalar, "*p"},
      {UnaryOp::PowScalar, "^p"}};
  for (const auto& [op, name] : ops) {
    INFO("unary " << name << " " << dtype_name(dtype_of<T>()));
    const bool positive = op == UnaryOp::Log || op == UnaryOp::Sqrt || op == UnaryOp::PowScalar;
    const std::vector<T> x = as<T>(positive ? positive_x : signed_x);
    const double p = op == UnaryOp::PowScalar ? 1.7 : -0.625;
    std::vector<T> y(n, T(-999));
    cpu_backend().unary(op, dtype_of<T>(), x.data(), y.data(), n, p);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = ref::unary(op, static_cast<double>(x[i]), static_cast<double>(static_cast<T>(p)));
    CHECK(worst(y, want) < tol<T>());
  }
  // The fused value + derivative pass.
  const std::vector<T> x = as<T>(signed_x);
  std::vector<T> y(n), dydx(n);
  gelu_forward_kernel()(cpu_backend(), dtype_of<T>(), x.data(), y.data(), dydx.data(), n);
  std::vector<double> want_y(n), want_d(n);
  for (int64_t i = 0; i < n; ++i) {
    want_y[i] = ref::unary(UnaryOp::Gelu, static_cast<double>(x[i]), 0.0);
    want_d[i] = ref::unary(UnaryOp::GeluGrad, static_cast<double>(x[i]), 0.0);
  }
  CHECK(worst(y, want_y) < tol<T>());
  CHECK(worst(dydx, want_d) < tol<T>());
}

// An operand of a broadcast op: its stored values and its strides aligned to the output.
struct Operand {
  std::vector<double> values;
  Shape strides;
  double at(const Shape& index) const {
    int64_t off = 0;
    for (size_t d = 0; d < index.size(); ++d) off += index[d] * strides[d];
    return values[off];
  }
};

// Values in {0.5, 0.75, ..., 2}: positive (Pow), exact quotients are not needed, and
// equal pairs occur (Equal).
Operand operand(int64_t stored, const Shape& strides, uint64_t seed) {
  Operand o{uniform(stored, 0, 7, seed), strides};
  for (double& v : o.values) v = 0.5 + 0.25 * std::floor(v);
  return o;
}

template <typename T>
void check_binary() {
  const int64_t R = kBigRows, C = kBigCols;
  struct Plan {
    const char* name;
    Shape shape;
    Operand a, b;
  };
  std::vector<Plan> plans;
  plans.push_back({"same shape", {R, C}, operand(R * C, {C, 1}, 21), operand(R * C, {C, 1}, 22)});
  plans.push_back({"row vector b", {R, C}, operand(R * C, {C, 1}, 23), operand(C, {0, 1}, 24)});
  plans.push_back({"column a, row b", {R, C}, operand(R, {1, 0}, 25), operand(C, {0, 1}, 26)});
  plans.push_back({"transposed a", {R, C}, operand(R * C, {1, R}, 27), operand(R * C, {C, 1}, 28)});
  plans.push_back({"3-D x vector", {3, 129, 173}, operand(3 * 129 * 173, {129 * 173, 173, 1}, 29), operand(173, {0, 0, 1}, 30)});
  for (const Plan& plan : plans) {
    const int64_t n = shape_numel(plan.shape);
    REQUIRE(n > (1 << 16));
    const std::vector<T> a = as<T>(plan.a.values), b = as<T>(plan.b.values);
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Equal}) {
      INFO(plan.name << ", binary op " << static_cast<int>(op) << " " << dtype_name(dtype_of<T>()));
      std::vector<T> out(n, T(-999));
      cpu_backend().binary(op, dtype_of<T>(), BroadcastPlan{plan.shape, plan.a.strides, plan.b.strides}, a.data(), b.data(),
                   out.data());
      std::vector<double> want(n);
      Shape index(plan.shape.size(), 0);
      for (int64_t i = 0; i < n; ++i) {
        want[i] = ref::binary(op, plan.a.at(index), plan.b.at(index));
        for (int64_t d = static_cast<int64_t>(index.size()) - 1; d >= 0 && ++index[d] == plan.shape[d]; --d) index[d] = 0;
      }
      CHECK(worst(out, want) < tol<T>());
    }
  }
  // A strided gather (a transposed view, made contiguous) runs over the same loop.
  const std::vector<T> stored = as<T>(uniform(R * C, -1, 1, 31));
  std::vector<T> gathered(R * C);
  cpu_backend().strided_copy(dtype_of<T>(), StridedView{stored.data(), {C, R}, {1, C}, 0}, gathered.data());
  std::vector<double> want(R * C);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < R; ++j) want[i * R + j] = static_cast<double>(stored[j * C + i]);
  CHECK(worst(gathered, want) == 0.0);
}

// ---- row kernels ---------------------------------------------------------------------------

template <typename T>
void check_rows() {
  {  // sum_rows
    const std::vector<T> x = as<T>(uniform(kBigRows * kBigCols, -1, 1, 41));
    std::vector<T> y(kBigRows, T(-999));
    cpu_backend().sum_rows(dtype_of<T>(), x.data(), y.data(), kBigRows, kBigCols);
    const std::vector<double> xd(x.begin(), x.end());
    std::vector<double> want(kBigRows);
    ref::sum_rows(xd.data(), want.data(), kBigRows, kBigCols);
    INFO("sum_rows " << dtype_name(dtype_of<T>()));
    CHECK(worst(y, want) < tol<T>());
  }
  const std::vector<T> x = as<T>(uniform(kRows * kCols, -4, 4, 42)), dy = as<T>(uniform(kRows * kCols, -1, 1, 43));
  for (bool log : {false, true}) {
    INFO((log ? "log_softmax " : "softmax ") << dtype_name(dtype_of<T>()));
    std::vector<T> y(kRows * kCols), dx(kRows * kCols);
    softmax_rows_kernel()(cpu_backend(), dtype_of<T>(), x.data(), y.data(), kRows, kCols, log);
    softmax_backward_rows_kernel()(cpu_backend(), dtype_of<T>(), y.data(), dy.data(), dx.data(), kRows, kCols, log);
    const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end());
    std::vector<double> want_y(kRows * kCols), want_dx(kRows * kCols);
    ref::softmax_rows(xd.data(), want_y.data(), kRows, kCols, log);
    ref::softmax_backward_rows(want_y.data(), dyd.data(), want_dx.data(), kRows, kCols, log);
    CHECK(worst(y, want_y) < tol<T>());
    CHECK(worst(dx, want_dx) < tol<T>());
  }
}

template <typename T>
void check_layernorm() {
  const int64_t n = kRows * kCols;
  const double eps = 1e-5;
  const std::vector<T> x = as<T>(uniform(n, -2, 3, 51)), dy = as<T>(uniform(n, -1, 1, 52));
  const std::vector<T> w = as<T>(uniform(kCols, 0.5, 1.5, 53)), b = as<T>(uniform(kCols, -1, 1, 54));
  // dweight and dbias are accumulated into (+=): start from values that are not zero.
  const std::vector<T> dw0 = as<T>(uniform(kCols, -1, 1, 55)), db0 = as<T>(uniform(kCols, -1, 1, 56));
  std::vector<T> y(n), mean(kRows), rstd(kRows), dx(n), dw = dw0, db = db0;
  layernorm_forward_kernel()(cpu_backend(), dtype_of<T>(), x.data(), w.data(), b.data(), y.data(), mean.data(),
                             rstd.data(), kRows, kCols, eps);
  layernorm_backward_kernel()(cpu_backend(), dtype_of<T>(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                              dx.data(), dw.data(), db.data(), kRows, kCols);

  const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end()), wd(w.begin(), w.end()),
      bd(b.begin(), b.end());
  std::vector<double> want_y(n), want_mean(kRows), want_rstd(kRows), want_dx(n);
  std::vector<double> want_dw(dw0.begin(), dw0.end()), want_db(db0.begin(), db0.end());
  ref::layernorm_forward(xd.data(), wd.data(), bd.data(), want_y.data(), want_mean.data(), want_rstd.data(), kRows,
                         kCols, eps);
  ref::layernorm_backward(dyd.data(), xd.data(), wd.data(), want_mean.data(), want_rstd.data(), want_dx.data(),
                          want_dw.data(), want_db.data(), kRows, kCols);
  INFO("layernorm " << dtype_name(dtype_of<T>()));
  CHECK(worst(y, want_y) < tol<T>());
  CHECK(worst(mean, want_mean) < tol<T>());
  CHECK(worst(rstd, want_rstd) < tol<T>());
  CHECK(worst(dx, want_dx) < 10 * tol<T>());
  // Sums over 131 rows of O(1) terms: relative to that size.
  CHECK(worst(dw, want_dw, static_cast<double>(kRows)) < tol<T>());
  CHECK(worst(db, want_db, static_cast<double>(kRows)) < tol<T>());
}

// rmsnorm (engine/ops/rmsnorm.cpp): 131 rows of 129, dweight from each thread's partial.
template <typename T>
void check_rmsnorm() {
  const int64_t n = kRows * kCols;
  const double eps = 1e-5;
  const std::vector<T> x = as<T>(uniform(n, -2, 3, 57)), dy = as<T>(uniform(n, -1, 1, 58));
  const std::vector<T> w = as<T>(uniform(kCols, 0.5, 1.5, 59));
  // dweight is accumulated into (+=): start from values that are not zero.
  const std::vector<T> dw0 = as<T>(uniform(kCols, -1, 1, 60));
  std::vector<T> y(n), rstd(kRows), dx(n), dw = dw0;
  rmsnorm_forward_kernel()(cpu_backend(), dtype_of<T>(), x.data(), w.data(), y.data(), rstd.data(), kRows, kCols,
                           eps);
  rmsnorm_backward_kernel()(cpu_backend(), dtype_of<T>(), dy.data(), x.data(), w.data(), rstd.data(), dx.data(),
                            dw.data(), kRows, kCols);

  const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end()), wd(w.begin(), w.end());
  std::vector<double> want_y(n), want_rstd(kRows), want_dx(n), want_dw(dw0.begin(), dw0.end());
  ref::rmsnorm_forward(xd.data(), wd.data(), want_y.data(), want_rstd.data(), kRows, kCols, eps);
  ref::rmsnorm_backward(dyd.data(), xd.data(), wd.data(), want_rstd.data(), want_dx.data(), want_dw.data(), kRows,
                        kCols);
  INFO("rmsnorm " << dtype_name(dtype_of<T>()));
  CHECK(worst(y, want_y) < tol<T>());
  CHECK(worst(rstd, want_rstd) < tol<T>());
  CHECK(worst(dx, want_dx) < 10 * tol<T>());
  // Sums over 131 rows of O(1) terms: relative to that size.
  CHECK(worst(dw, want_dw, static_cast<double>(kRows)) < tol<T>());
}

template <typename T>
void check_cross_entropy() {
  const int64_t n = kRows * kCols, ignore = -100;
  const std::vector<T> logits = as<T>(uniform(n, -5, 5, 61));
  std::vector<int64_t> targets(kRows);
  Generator gen(62);
  for (int64_t r = 0; r < kRows; ++r) targets[r] = r % 7 == 3 ? ignore : static_cast<int64_t>(gen.below(kCols));
  const double scale = 1.0 / 111.0;
  std::vector<T> loss(kRows, T(-999)), lse(kRows), dlogits(n, T(-999));
  cross_entropy_forward_kernel()(cpu_backend(), dtype_of<T>(), logits.data(), targets.data(), loss.data(), lse.data(),
                                 kRows, kCols, ignore);
  cross_entropy_backward_kernel()(cpu_backend(), dtype_of<T>(), logits.data(), targets.data(), lse.data(),
                                  dlogits.data(), kRows, kCols, ignore, scale);
  const std::vector<double> logits_d(logits.begin(), logits.end());
  std::vector<double> want_loss(kRows), want_lse(kRows), want_d(n);
  ref::cross_entropy_forward(logits_d.data(), targets.data(), want_loss.data(), want_lse.data(), kRows, kCols, ignore);
  ref::cross_entropy_backward(logits_d.data(), targets.data(), want_lse.data(), want_d.data(), kRows, kCols, ignore,
                              scale);
  INFO("cross_entropy " << dtype_name(dtype_of<T>()));
  CHECK(worst(loss, want_loss) < tol<T>());
  CHECK(worst(lse, want_lse) < tol<T>());
  CHECK(worst(dlogits, want_d) < tol<T>());
}

// ---- attention -----------------------------------------------------------------------------

struct AttentionResult {
  std::vector<double> y, attn, p, r, dq, dk, dv;
};

// The spec's forward and backward (../shared/spec/RUNWAY.md, "Gradients") as plain loops:
// the reference kernel of engine/ops/attention.cpp, its backward fed its own forward.
AttentionResult attention_reference(const AttentionArgs& a, const std::vector<double>& q, const std::vector<double>& k,
                                    const std::vector<double>& v, const std::vector<double>& dy) {
  const int64_t n = a.batch * a.heads * a.seq * a.head_dim, tt = a.seq * a.seq;
  AttentionResult out;
  out.y.assign(n, 0.0);
  out.attn.assign(a.batch * a.heads * tt, 0.0);
  out.p.assign(a.batch * tt, 0.0);
  out.r.assign(a.batch * tt, 0.0);
  out.dq.assign(n, 0.0);
  out.dk.assign(n, 0.0);
  out.dv.assign(n, 0.0);
  reference::attention_forward(a, q.data(), k.data(), v.data(), out.y.data(), out.attn.data(), out.p.data(),
                               out.r.data());
  reference::attention_backward(a, q.data(), k.data(), v.data(), out.attn.data(), out.p.data(), dy.data(),
                                out.dq.data(), out.dk.data(), out.dv.data());
  return out;
}

void check_attention(const std::string& name, AttentionArgs a) {
  INFO("attention: " << name);
  const int64_t n = a.batch * a.heads * a.seq * a.head_dim, tt = a.seq * a.seq;
  const std::vector<double> q = uniform(n, -1.5, 1.5, 71), k = uniform(n, -1.5, 1.5, 72), v = uniform(n, -1, 1, 73),
                            dy = uniform(n, -1, 1, 74);
  std::vector<double> y(n), attn(a.batch * a.heads * tt), p(a.batch * tt, 0.0), r(a.batch * tt, 0.0), dq(n), dk(n),
      dv(n);
  cpu_backend().attention_forward(DType::Float64, a, q.data(), k.data(), v.data(), y.data(), attn.data(), p.data(), r.data());
  cpu_backend().attention_backward(DType::Float64, a, q.data(), k.data(), v.data(), attn.data(), p.data(), dy.data(),
                           dq.data(), dk.data(), dv.data());
  const AttentionResult want = attention_reference(a, q, k, v, dy);
  CHECK(worst(y, want.y) < 1e-12);
  CHECK(worst(attn, want.attn) < 1e-12);
  if (a.rewired) {
    CHECK(worst(p, want.p) < 1e-12);
    CHECK(worst(r, want.r) < 1e-12);
  }
  CHECK(worst(dq, want.dq) < 1e-11);
  CHECK(worst(dk, want.dk) < 1e-11);
  CHECK(worst(dv, want.dv) < 1e-11);
}

}  // namespace

TEST_CASE("threaded elementwise kernels (unary, GELU, broadcast binary, strided copy) match double loops") {
  ThreadCount threads(kThreads);
  check_unary<double>();
  check_unary<float>();
  check_binary<double>();
  check_binary<float>();
}

TEST_CASE("threaded row sums, softmax and log_softmax forward and backward match double loops") {
  ThreadCount threads(kThreads);
  check_rows<double>();
  check_rows<float>();
}

TEST_CASE("threaded layernorm forward and backward, with the dweight and dbias partial sums of every thread") {
  ThreadCount threads(kThreads);
  check_layernorm<double>();
  check_layernorm<float>();
}

TEST_CASE("threaded rmsnorm forward and backward, with the dweight partial sums of every thread") {
  ThreadCount threads(kThreads);
  check_rmsnorm<double>();
  check_rmsnorm<float>();
}

TEST_CASE("threaded cross-entropy forward and backward with ignored rows match double loops") {
  ThreadCount threads(kThreads);
  check_cross_entropy<double>();
  check_cross_entropy<float>();
}

TEST_CASE("threaded attention forward and backward, standard and rewired, match the spec as plain loops") {
  ThreadCount threads(kThreads);
  // B = 5 (stage 1 loops over batch items: 5 over 3 threads), H = 3 (15 heads), T = 37
  // (odd, and past one 32-row causal block), D = 8.
  AttentionArgs base;
  base.batch = 5;
  base.heads = 3;
  base.seq = 37;
  base.head_dim = 8;
  base.scale = 1.0 / std::sqrt(8.0);
  check_attention("standard", base);
  AttentionArgs alibi = base;
  alibi.alibi_slopes = {0.5, 0.125, 0.03125};
  check_attention("standard, alibi", alibi);
  for (bool two_hop : {false, true}) {
    AttentionArgs rw = base;
    rw.rewired = true;
    rw.two_hop = two_hop;
    rw.runway_head = 1;
    rw.beta = 1.3;
    check_attention(two_hop ? "rewired two_hop" : "rewired absorption", rw);
    rw.beta = -0.7;
    rw.runway_head = 2;
    rw.alibi_slopes = alibi.alibi_slopes;
    check_attention(two_hop ? "rewired two_hop, beta -0.7, alibi" : "rewired absorption, beta -0.7, alibi", rw);
    rw.detach = true;
    check_attention(two_hop ? "rewired two_hop, detached" : "rewired absorption, detached", rw);
  }
}

TEST_CASE("threaded qkv_to_heads with RoPE and its inverse heads_to_qkv match a plain loop") {
  ThreadCount threads(kThreads);
  // B T = 82 (batch, position) rows over three threads: 27/27/28.
  const int64_t B = 2, T = 41, H = 5, D = 16, C = H * D, n = 3 * B * T * C;
  REQUIRE(n > (1 << 14));
  const double base = 10000.0;
  const std::vector<double> packed = uniform(n, -1, 1, 81);
  std::vector<double> heads(n), back(n);
  qkv_to_heads_kernel()(cpu_backend(), DType::Float64, packed.data(), heads.data(), B, T, H, D, base);
  std::vector<double> want(n);
  for (int64_t part = 0; part < 3; ++part)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < D / 2; ++c) {
            const double* from = packed.data() + ((b * T + t) * 3 + part) * C + h * D;
            double* to = want.data() + (((part * B + b) * H + h) * T + t) * D;
            const double angle = part < 2 ? static_cast<double>(t) * std::pow(base, -2.0 * static_cast<double>(c) / D) : 0.0;
            to[c] = from[c] * std::cos(angle) - from[c + D / 2] * std::sin(angle);
            to[c + D / 2] = from[c] * std::sin(angle) + from[c + D / 2] * std::cos(angle);
          }
  CHECK(worst(heads, want) < 1e-14);
  heads_to_qkv_kernel()(cpu_backend(), DType::Float64, heads.data(), back.data(), B, T, H, D, base);  // rotates back
  CHECK(worst(back, packed) < 1e-14);
}

TEST_CASE("threaded rope and its inverse match a plain loop") {
  ThreadCount threads(kThreads);
  // 17 sequences of T = 37, D = 32: rows * T * D = 20128 > 2^14, 629 (sequence, position)
  // rows split 209/210/210. The hand-computed angles are in tests/test_positional.cpp;
  // this is about the split over threads.
  const int64_t rows = 17, T = 37, D = 32, half = D / 2, n = rows * T * D, offset = 4;
  const double base = 500.0;
  for (bool inverse : {false, true}) {
    INFO((inverse ? "inverse" : "forward"));
    const std::vector<double> x = uniform(n, -1, 1, 85);
    std::vector<double> y(n), want(n);
    cpu_backend().rope(DType::Float64, x.data(), y.data(), rows, T, D, base, offset, inverse);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < half; ++c) {
          const double angle = (inverse ? -1.0 : 1.0) * static_cast<double>(t + offset) *
                               std::pow(base, -2.0 * static_cast<double>(c) / static_cast<double>(D));
          const int64_t at = (r * T + t) * D + c;
          want[at] = x[at] * std::cos(angle) - x[at + half] * std::sin(angle);
          want[at + half] = x[at] * std::sin(angle) + x[at + half] * std::cos(angle);
        }
    CHECK(worst(y, want) < 1e-14);
  }
}

TEST_CASE("threaded gemm groups (row, column and batch splits) match double loops") {
  ThreadCount threads(kThreads);
  struct Case {
    bool ta, tb;
    int64_t m, n, k, batch;
    bool bias;
    double beta;
  };
  // Rows split (257 rows in parts of 16), columns split (3 x 1001), batch items split
  // (5 over 3 threads), and a small one that goes whole to one thread.
  const std::vector<Case> cases{{false, false, 257, 67, 131, 1, true, 0.0},
                                {true, true, 3, 1001, 129, 1, false, 0.5},
                                {false, true, 41, 53, 67, 5, false, 1.0},
                                {true, false, 5, 7, 9, 1, false, 0.0}};
  std::vector<std::vector<double>> as_, bs, cs, biases, wants;
  std::vector<GemmCall> calls;
  uint64_t seed = 90;
  for (const Case& c : cases) {
    as_.push_back(uniform(c.batch * c.m * c.k, -1, 1, ++seed));
    bs.push_back(uniform(c.batch * c.k * c.n, -1, 1, ++seed));
    cs.push_back(uniform(c.batch * c.m * c.n, -1, 1, ++seed));
    biases.push_back(uniform(c.n, -1, 1, ++seed));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    GemmArgs g;
    g.trans_a = c.ta;
    g.trans_b = c.tb;
    g.m = c.m;
    g.n = c.n;
    g.k = c.k;
    g.lda = c.ta ? c.m : c.k;
    g.ldb = c.tb ? c.k : c.n;
    g.ldc = c.n;
    g.stride_a = c.m * c.k;
    g.stride_b = c.k * c.n;
    g.stride_c = c.m * c.n;
    g.batch = c.batch;
    g.alpha = -0.75;
    g.beta = c.beta;
    if (c.bias) g.row_init = biases[i].data();
    calls.push_back(GemmCall{g, as_[i].data(), bs[i].data(), cs[i].data()});
    std::vector<double> want = cs[i];
    ref::gemm(g, as_[i].data(), bs[i].data(), want.data());
    wants.push_back(want);
  }
  gemm_group_kernel()(cpu_backend(), DType::Float64, calls);
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("product " << i);
    CHECK(worst(cs[i], wants[i]) < 1e-13);
  }
}

namespace {
class OddParams : public nn::Module {
 public:
  explicit OddParams(Generator& gen) {
    // 7 + 20001 + 3 + 16385 + 1 float32 elements (> 2^15, split over 3 threads across
    // parameter boundaries) and a float64 one of 40001.
    const std::vector<int64_t> sizes{7, 20001, 3, 16385, 1};
    for (size_t i = 0; i < sizes.size(); ++i)
      ps.push_back(add_parameter("p" + std::to_string(i), Tensor::uniform({sizes[i]}, -1, 1, gen), i % 2 == 0));
    ps.push_back(add_parameter("d", Tensor::uniform({40001}, -1, 1, gen, DType::Float64), true));
  }
  std::vector<Tensor> ps;
};
}  // namespace

// tests/test_optim.cpp checks the update rule over many parameters with the default
// thread count; this one forces three threads, so the element run is cut at points
// that fall inside parameters of odd sizes.
TEST_CASE("threaded AdamW over several parameters of odd sizes matches the rule in double") {
  ThreadCount threads(kThreads);
  Generator gen(5);
  OddParams m(gen);
  nn::AdamWOptions o;
  nn::AdamW opt(m.named_parameters(), o);
  const double lr = 0.01, grad_scale = 0.8;
  std::vector<std::vector<double>> before, mom1, mom2;
  for (const Tensor& p : m.ps) {
    before.push_back(p.to_vector());
    mom1.emplace_back(p.numel(), 0.0);
    mom2.emplace_back(p.numel(), 0.0);
  }
  for (int t = 1; t <= 2; ++t) {
    opt.zero_grad();
    std::vector<std::vector<double>> grads;
    for (const Tensor& p : m.ps) {  // d/dp sum(p * g) = g
      const Tensor g = Tensor::uniform(p.shape(), -2, 2, gen, p.dtype());
      sum(mul(p, g)).backward();
      grads.push_back(g.to_vector());
    }
    opt.step(lr, grad_scale);
    const double c1 = 1 - std::pow(o.beta1, t), c2 = 1 - std::pow(o.beta2, t);
    for (size_t i = 0; i < m.ps.size(); ++i) {
      const bool decay = i % 2 == 0 || i + 1 == m.ps.size();
      const std::vector<double> got = m.ps[i].to_vector();
      std::vector<double> want(got.size());
      for (size_t j = 0; j < got.size(); ++j) {
        const double g = grads[i][j] * grad_scale;
        mom1[i][j] = o.beta1 * mom1[i][j] + (1 - o.beta1) * g;
        mom2[i][j] = o.beta2 * mom2[i][j] + (1 - o.beta2) * g * g;
        want[j] = before[i][j] * (decay ? 1 - lr * o.weight_decay : 1.0) -
                  lr * (mom1[i][j] / c1) / (std::sqrt(mom2[i][j] / c2) + o.eps);
      }
      INFO("parameter " << i << ", step " << t);
      CHECK(worst(got, want) < (m.ps[i].dtype() == DType::Float32 ? 2e-6 : 1e-13));
      before[i] = got;  // carry on from the optimizer's own values
    }
  }
}
