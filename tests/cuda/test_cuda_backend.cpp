// Backend-vs-backend parity test for the CUDA backend.
//
// Every kernel of engine/backend.h runs on the same small random inputs through the
// CUDA backend and through the CPU backend (the reference), and the outputs are
// compared: float64 within 1e-12 + 1e-12 |ref|, float32 within 1e-5 + 1e-5 |ref|,
// int64 exactly. One line per check, then "N passed, M failed"; the exit code is
// nonzero on any failure, and 77 (ctest: skipped) when no CUDA device is usable.
//
// A stopgap until the op-table-driven parity test covers the CUDA backend.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda/skip_without_gpu.h"
#include "cuda/cuda_backend.h"
#include "engine/backend.h"
#include "engine/fused_kernel.h"
#include "engine/op_table.h"

namespace {

using runway::Backend;
using runway::BinaryOp;
using runway::BroadcastPlan;
using runway::DType;
using runway::GemmArgs;
using runway::Shape;
using runway::StridedView;
using runway::UnaryOp;

using Values = std::vector<double>;
using Outputs = std::vector<Values>;

// A fused kernel registered by name (engine/fused_kernel.h), called as its op calls it: on
// the CUDA backend its CUDA implementation, on the CPU backend its CPU one (op_table()
// links every op family's file, and so its kernel objects, into this program).
template <typename... Args>
const runway::FusedKernel<Args...>& kernel(const char* name) {
  (void)runway::op_table();
  return runway::fused_kernel<Args...>(name);
}
// ---- the fused kernels (begin)
const auto& layernorm_forward_kernel() {
  return kernel<DType, const void*, const void*, const void*, void*, void*, void*, int64_t, int64_t, double>(
      "layernorm_forward");
}
const auto& layernorm_backward_kernel() {
  return kernel<DType, const void*, const void*, const void*, const void*, const void*, void*, void*, void*,
                int64_t, int64_t>(
      "layernorm_backward");
}
const auto& embedding_forward_kernel() {
  return kernel<DType, const void*, const int64_t*, void*, int64_t, int64_t>(
      "embedding_forward");
}
const auto& embedding_backward_kernel() {
  return kernel<DType, const void*, const int64_t*, void*, int64_t, int64_t>(
      "embedding_backward");
}
const auto& softmax_rows_kernel() { return kernel<DType, const void*, void*, int64_t, int64_t, bool>("softmax_rows"); }
const auto& softmax_backward_rows_kernel() {
  return kernel<DType, const void*, const void*, void*, int64_t, int64_t, bool>(
      "softmax_backward_rows");
}
const auto& causal_mask_kernel() {
  return kernel<DType, const void*, void*, int64_t, int64_t, int64_t, double>(
      "causal_mask");
}
const auto& cross_entropy_forward_kernel() {
  return kernel<DType, const void*, const int64_t*, void*, void*, int64_t, int64_t, int64_t>(
      "cross_entropy_forward");
}
const auto& cross_entropy_backward_kernel() {
  return kernel<DType, const void*, const int64_t*, const void*, void*, int64_t, int64_t, int64_t, double>(
      "cross_entropy_backward");
}
const auto& cumsum_rows_kernel() {
  return kernel<DType, const void*, void*, int64_t, int64_t, bool, bool>(
      "cumsum_rows");
}
// ---- (end)

const double kInf = std::numeric_limits<double>::infinity();
const DType kFloatTypes[] = {DType::Float32, DType::Float64};

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + ")";
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

// ---- inputs ----------------------------------------------------------------------

// Deterministic inputs: each case seeds its own generator, so both backends see the
// same values.
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  Values uniform(int64_t n, double lo, double hi) {
    std::uniform_real_distribution<double> dist(lo, hi);
    Values v(static_cast<size_t>(n));
    for (double& x : v) x = dist(gen_);
    return v;
  }
  // Integers in [lo, hi], as doubles.
  Values integers(int64_t n, int64_t lo, int64_t hi) {
    std::uniform_int_distribution<int64_t> dist(lo, hi);
    Values v(static_cast<size_t>(n));
    for (double& x : v) x = static_cast<double>(dist(gen_));
    return v;
  }
  std::vector<int64_t> indices(int64_t n, int64_t bound) {
    std::uniform_int_distribution<int64_t> dist(0, bound - 1);
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t& x : v) x = dist(gen_);
    return v;
  }

 private:
  std::mt19937_64 gen_;
};

// Device buffers on one backend for one run of a case, freed when it ends.
class Buffers {
 public:
  explicit Buffers(Backend& backend) : be_(backend) {}
  ~Buffers() {
    for (void* p : owned_) be_.deallocate(p);
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  Backend& backend() { return be_; }

  void* alloc(DType dt, int64_t n) {
    void* p = be_.allocate(static_cast<size_t>(n) * runway::dtype_size(dt));
    owned_.push_back(p);
    return p;
  }

  // Converts `v` to dt and copies it to a new buffer.
  void* upload(DType dt, const Values& v) {
    void* p = alloc(dt, static_cast<int64_t>(v.size()));
    switch (dt) {
      case DType::Float32: put(std::vector<float>(v.begin(), v.end()), p); break;
      case DType::Float64: put(v, p); break;
      case DType::Int64: {
        std::vector<int64_t> ints(v.size());
        for (size_t i = 0; i < v.size(); ++i) ints[i] = static_cast<int64_t>(v[i]);
        put(ints, p);
        break;
      }
    }
    return p;
  }

  const int64_t* upload_ids(const std::vector<int64_t>& ids) {
    void* p = alloc(DType::Int64, static_cast<int64_t>(ids.size()));
    put(ids, p);
    return static_cast<const int64_t*>(p);
  }

  // Copies n elements of type dt back to the host, as doubles.
  Values download(DType dt, const void* p, int64_t n) {
    switch (dt) {
      case DType::Float32: return get<float>(p, n);
      case DType::Float64: return get<double>(p, n);
      case DType::Int64: return get<int64_t>(p, n);
    }
    return {};
  }

 private:
  template <typename T>
  void put(const std::vector<T>& host, void* dst) {
    be_.copy_from_host(dst, host.data(), host.size() * sizeof(T));
  }
  template <typename T>
  Values get(const void* src, int64_t n) {
    std::vector<T> host(static_cast<size_t>(n));
    be_.copy_to_host(host.data(), src, host.size() * sizeof(T));
    return Values(host.begin(), host.end());
  }

  Backend& be_;
  std::vector<void*> owned_;
};

// A case runs some kernels on one backend and returns the outputs to compare.
using Case = std::function<Outputs(Buffers&)>;

// ---- running and comparing ---------------------------------------------------------

bool close_enough(double got, double ref, DType dt) {
  if (std::isnan(ref) || std::isnan(got)) return std::isnan(ref) && std::isnan(got);
  if (std::isinf(ref) || std::isinf(got)) return got == ref;
  double tol = 0.0;
  switch (dt) {
    case DType::Float32: tol = 1e-5 + 1e-5 * std::fabs(ref); break;
    case DType::Float64: tol = 1e-12 + 1e-12 * std::fabs(ref); break;
    case DType::Int64: tol = 0.0; break;
  }
  return std::fabs(got - ref) <= tol;
}

class Runner {
 public:
  Runner(Backend& cpu, Backend& cuda) : cpu_(cpu), cuda_(cuda) {}

  // Runs `run` on both backends and compares every output with tolerance for `dt`.
  void compare(const std::string& name, DType dt, const Case& run) {
    Outputs ref, got;
    std::string error;
    if (!run_on(cpu_, run, &ref, &error)) return report(name, false, "cpu threw: " + error);
    if (!run_on(cuda_, run, &got, &error)) return report(name, false, "cuda threw: " + error);
    if (ref.size() != got.size()) return report(name, false, "different number of outputs");
    double max_diff = 0.0;
    for (size_t o = 0; o < ref.size(); ++o) {
      if (ref[o].size() != got[o].size()) {
        return report(name, false, "output " + std::to_string(o) + " has a different size");
      }
      for (size_t i = 0; i < ref[o].size(); ++i) {
        const double r = ref[o][i], g = got[o][i];
        if (!close_enough(g, r, dt)) {
          char buf[200];
          std::snprintf(buf, sizeof buf, "output %zu [%zu]: cuda %.17g vs cpu %.17g", o, i, g, r);
          return report(name, false, buf);
        }
        if (std::isfinite(r)) max_diff = std::max(max_diff, std::fabs(g - r));
      }
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "max |diff| %.3g", max_diff);
    report(name, true, buf);
  }

  // Runs `run` on the CUDA backend and expects it to throw runway::Error.
  void expect_error(const std::string& name, const std::function<void(Buffers&)>& run) {
    try {
      Buffers bufs(cuda_);
      run(bufs);
      cuda_.synchronize();
    } catch (const runway::Error& e) {
      return report(name, true, std::string("threw: ") + e.what());
    } catch (const std::exception& e) {
      return report(name, false, std::string("threw a non-runway error: ") + e.what());
    }
    report(name, false, "did not throw");
  }

  void check(const std::string& name, bool ok, const std::string& detail) {
    report(name, ok, detail);
  }

  int finish() const {
    std::printf("%d passed, %d failed\n", passed_, failed_);
    return failed_ == 0 ? 0 : 1;
  }

 private:
  static bool run_on(Backend& be, const Case& run, Outputs* out, std::string* error) {
    try {
      Buffers bufs(be);
      *out = run(bufs);
      be.synchronize();
      return true;
    } catch (const std::exception& e) {
      *error = e.what();
      return false;
    }
  }

  void report(const std::string& name, bool ok, const std::string& detail) {
    (ok ? passed_ : failed_)++;
    std::printf("%s  %-48s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
    std::fflush(stdout);
  }

  Backend& cpu_;
  Backend& cuda_;
  int passed_ = 0, failed_ = 0;
};

std::string tag(const std::string& op, DType dt) { return op + " " + runway::dtype_name(dt); }

// ---- memory and layout ------------------------------------------------------------------

void test_memory(Runner& t) {
  t.compare("copy_from_host/copy_within/copy_to_host", DType::Float64, [](Buffers& b) {
    Rng rng(1);
    const Values v = rng.uniform(1000, -10, 10);
    void* src = b.upload(DType::Float64, v);
    void* dst = b.alloc(DType::Float64, 1000);
    b.backend().copy_within(dst, src, 1000 * sizeof(double));
    return Outputs{b.download(DType::Float64, dst, 1000)};
  });
}

void test_fill(Runner& t) {
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    t.compare(tag("fill", dt), dt, [dt](Buffers& b) {
      void* p = b.alloc(dt, 1001);
      b.backend().fill(dt, p, 1001, dt == DType::Int64 ? -7.0 : 3.25);
      return Outputs{b.download(dt, p, 1001)};
    });
  }
}

void test_strided_copy(Runner& t) {
  struct View {
    const char* what;
    int64_t base_numel;
    Shape shape, strides;
    int64_t offset;
  };
  const View views[] = {
      {"permute (3,4,5)->(5,3,4)", 60, {5, 3, 4}, {1, 20, 5}, 0},
      {"slice with offset", 42, {3, 4}, {14, 2}, 3},
      {"expand (1,5)->(4,3,5)", 5, {4, 3, 5}, {0, 0, 1}, 0},
      {"0-dim", 10, {}, {}, 7},
      {"8 dims", 256, {2, 2, 2, 2, 2, 2, 2, 2}, {1, 2, 4, 8, 16, 32, 64, 128}, 0},
  };
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    for (const View& v : views) {
      t.compare(tag(std::string("strided_copy ") + v.what, dt), dt, [dt, v](Buffers& b) {
        Rng rng(2);
        const void* base = b.upload(dt, rng.integers(v.base_numel, -1000, 1000));
        StridedView view;
        view.base = base;
        view.shape = v.shape;
        view.strides = v.strides;
        view.offset = v.offset;
        void* dst = b.alloc(dt, numel(v.shape));
        b.backend().strided_copy(dt, view, dst);
        return Outputs{b.download(dt, dst, numel(v.shape))};
      });
    }
  }
}

void test_cast(Runner& t) {
  const DType all[] = {DType::Float32, DType::Float64, DType::Int64};
  for (DType from : all) {
    for (DType to : all) {
      const std::string name = std::string("cast ") + runway::dtype_name(from) + " -> " +
                               runway::dtype_name(to);
      t.compare(name, to, [from, to](Buffers& b) {
        Rng rng(3);
        // Float sources avoid exact .5 cases; conversion to int64 truncates.
        const Values v = from == DType::Int64 ? rng.integers(777, -100000, 100000)
                                              : rng.uniform(777, -50, 50);
        const void* src = b.upload(from, v);
        void* dst = b.alloc(to, 777);
        b.backend().cast(from, src, to, dst, 777);
        return Outputs{b.download(to, dst, 777)};
      });
    }
  }
}

// ---- elementwise --------------------------------------------------------------------------

void test_unary(Runner& t) {
  struct U {
    UnaryOp op;
    const char* name;
    double lo, hi, param;
  };
  const U ops[] = {
      {UnaryOp::Neg, "Neg", -3, 3, 0},           {UnaryOp::Exp, "Exp", -3, 3, 0},
      {UnaryOp::Log, "Log", 0.1, 5, 0},          {UnaryOp::Sqrt, "Sqrt", 0.1, 5, 0},
      {UnaryOp::Tanh, "Tanh", -3, 3, 0},         {UnaryOp::Sigmoid, "Sigmoid", -6, 6, 0},
      {UnaryOp::Relu, "Relu", -3, 3, 0},         {UnaryOp::Gelu, "Gelu", -4, 4, 0},
      {UnaryOp::ReluGrad, "ReluGrad", -3, 3, 0}, {UnaryOp::GeluGrad, "GeluGrad", -4, 4, 0},
      {UnaryOp::AddScalar, "AddScalar", -3, 3, 0.75},
      {UnaryOp::MulScalar, "MulScalar", -3, 3, -1.5},
      {UnaryOp::PowScalar, "PowScalar", 0.1, 3, 2.5},
  };
  for (DType dt : kFloatTypes) {
    for (const U& u : ops) {
      t.compare(tag(std::string("unary ") + u.name, dt), dt, [dt, u](Buffers& b) {
        Rng rng(4);
        const int64_t n = 1037;
        const void* x = b.upload(dt, rng.uniform(n, u.lo, u.hi));
        void* y = b.alloc(dt, n);
        b.backend().unary(u.op, dt, x, y, n, u.param);
        return Outputs{b.download(dt, y, n)};
      });
    }
  }
}

// A plan for broadcasting a (shape a_shape) with b (shape b_shape), equal ranks.
BroadcastPlan make_plan(const Shape& a_shape, const Shape& b_shape) {
  BroadcastPlan plan;
  plan.out_shape.resize(a_shape.size());
  plan.a_strides = contiguous_strides(a_shape);
  plan.b_strides = contiguous_strides(b_shape);
  for (size_t d = 0; d < a_shape.size(); ++d) {
    plan.out_shape[d] = std::max(a_shape[d], b_shape[d]);
    if (a_shape[d] == 1) plan.a_strides[d] = 0;
    if (b_shape[d] == 1) plan.b_strides[d] = 0;
  }
  return plan;
}

void test_binary(Runner& t) {
  struct B {
    BinaryOp op;
    const char* name;
  };
  const B ops[] = {{BinaryOp::Add, "Add"},     {BinaryOp::Sub, "Sub"},
                   {BinaryOp::Mul, "Mul"},     {BinaryOp::Div, "Div"},
                   {BinaryOp::Pow, "Pow"},     {BinaryOp::Equal, "Equal"}};
  struct S {
    Shape a, b;
  };
  const S shapes[] = {
      {{3, 4, 5}, {3, 4, 5}},
      {{3, 1, 5}, {1, 4, 1}},
      {{2, 3, 4}, {1, 1, 1}},
      {{4, 1}, {1, 300}},
      {{}, {}},
      {{2, 1, 2, 1, 2, 1, 2, 3}, {1, 2, 1, 2, 1, 2, 1, 3}},
  };
  for (DType dt : kFloatTypes) {
    for (const B& op : ops) {
      for (const S& s : shapes) {
        const std::string name = tag(std::string("binary ") + op.name + " " + shape_str(s.a) +
                                         "x" + shape_str(s.b), dt);
        t.compare(name, dt, [dt, op, s](Buffers& b) {
          Rng rng(5);
          const int64_t na = numel(s.a), nb = numel(s.b);
          Values va, vb;
          if (op.op == BinaryOp::Equal) {
            va = rng.integers(na, 0, 2);  // small integers, so ties occur
            vb = rng.integers(nb, 0, 2);
          } else if (op.op == BinaryOp::Pow) {
            va = rng.uniform(na, 0.1, 3);
            vb = rng.uniform(nb, -2, 2);
          } else if (op.op == BinaryOp::Div) {
            va = rng.uniform(na, -3, 3);
            vb = rng.uniform(nb, 0.5, 3);
          } else {
            va = rng.uniform(na, -3, 3);
            vb = rng.uniform(nb, -3, 3);
          }
          const BroadcastPlan plan = make_plan(s.a, s.b);
          const int64_t n = numel(plan.out_shape);
          const void* pa = b.upload(dt, va);
          const void* pb = b.upload(dt, vb);
          void* out = b.alloc(dt, n);
          b.backend().binary(op.op, dt, plan, pa, pb, out);
          return Outputs{b.download(dt, out, n)};
        });
      }
    }
  }
}

// ---- gemm -----------------------------------------------------------------------------

struct GemmCase {
  int64_t m, n, k, batch;
  bool trans_a, trans_b, shared_b;
  double alpha, beta;
};

void run_gemm_case(Runner& t, DType dt, const GemmCase& c) {
  char name[160];
  std::snprintf(name, sizeof name, "gemm m%lld n%lld k%lld batch%lld %s%s%s a%.2g b%.2g %s",
                static_cast<long long>(c.m), static_cast<long long>(c.n),
                static_cast<long long>(c.k), static_cast<long long>(c.batch),
                c.trans_a ? "At" : "A", c.trans_b ? "Bt" : "B", c.shared_b ? " sharedB" : "",
                c.alpha, c.beta, runway::dtype_name(dt));
  t.compare(name, dt, [dt, c](Buffers& b) {
    Rng rng(6);
    GemmArgs g;
    g.trans_a = c.trans_a;
    g.trans_b = c.trans_b;
    g.m = c.m;
    g.n = c.n;
    g.k = c.k;
    g.batch = c.batch;
    g.alpha = c.alpha;
    g.beta = c.beta;
    // Stored shapes (row-major), each row padded so leading dims exceed the widths.
    const int64_t a_rows = c.trans_a ? c.k : c.m, a_cols = c.trans_a ? c.m : c.k;
    const int64_t b_rows = c.trans_b ? c.n : c.k, b_cols = c.trans_b ? c.k : c.n;
    g.lda = a_cols + 2;
    g.ldb = b_cols + 3;
    g.ldc = c.n + 1;
    g.stride_a = a_rows * g.lda + 5;
    g.stride_b = c.shared_b ? 0 : b_rows * g.ldb + 1;
    g.stride_c = c.m * g.ldc + 4;
    const int64_t size_a = g.stride_a * c.batch;
    const int64_t size_b = c.shared_b ? b_rows * g.ldb : g.stride_b * c.batch;
    const int64_t size_c = g.stride_c * c.batch;
    const void* pa = b.upload(dt, rng.uniform(size_a, -1, 1));
    const void* pb = b.upload(dt, rng.uniform(size_b, -1, 1));
    void* pc = b.upload(dt, rng.uniform(size_c, -1, 1));
    b.backend().gemm(dt, g, pa, pb, pc);
    return Outputs{b.download(dt, pc, size_c)};  // padding included: must be untouched
  });
}

void test_gemm(Runner& t) {
  for (DType dt : kFloatTypes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (bool shared_b : {false, true}) {
          run_gemm_case(t, dt, {5, 7, 9, 3, ta, tb, shared_b, 0.7, 0.3});
        }
      }
    }
    run_gemm_case(t, dt, {64, 48, 80, 2, false, true, false, 1.0, 0.0});
    run_gemm_case(t, dt, {1, 33, 17, 1, true, false, false, 1.0, 1.0});
    run_gemm_case(t, dt, {4, 6, 0, 2, false, false, false, 1.0, 0.5});  // k == 0: C = beta C
  }
}

// ---- row kernels ----------------------------------------------------------------------------

struct RowShape {
  int64_t rows, cols;
};
const RowShape kRowShapes[] = {{7, 300}, {5, 1}, {3, 1000}, {300, 7}};

std::string row_tag(const std::string& op, RowShape s, DType dt) {
  return tag(op + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols), dt);
}

// Host softmax (or log_softmax) of each row, for realistic softmax_backward inputs.
Values host_softmax(const Values& x, RowShape s, bool log) {
  Values y(x.size());
  for (int64_t r = 0; r < s.rows; ++r) {
    const double* xr = x.data() + r * s.cols;
    double mx = -kInf, sum = 0.0;
    for (int64_t c = 0; c < s.cols; ++c) mx = std::max(mx, xr[c]);
    for (int64_t c = 0; c < s.cols; ++c) sum += std::exp(xr[c] - mx);
    for (int64_t c = 0; c < s.cols; ++c) {
      y[r * s.cols + c] = log ? xr[c] - mx - std::log(sum) : std::exp(xr[c] - mx) / sum;
    }
  }
  return y;
}

void test_reductions(Runner& t) {
  for (DType dt : kFloatTypes) {
    for (RowShape s : kRowShapes) {
      for (bool is_max : {false, true}) {
        t.compare(row_tag(is_max ? "max_rows" : "sum_rows", s, dt), dt, [dt, s, is_max](Buffers& b) {
          Rng rng(7);
          const void* x = b.upload(dt, rng.uniform(s.rows * s.cols, -2, 2));
          void* y = b.alloc(dt, s.rows);
          if (is_max) {
            b.backend().max_rows(dt, x, y, s.rows, s.cols);
          } else {
            b.backend().sum_rows(dt, x, y, s.rows, s.cols);
          }
          return Outputs{b.download(dt, y, s.rows)};
        });
      }
    }
  }
}

void test_softmax(Runner& t) {
  for (DType dt : kFloatTypes) {
    for (RowShape s : kRowShapes) {
      for (bool log : {false, true}) {
        t.compare(row_tag(log ? "log_softmax_rows" : "softmax_rows", s, dt), dt,
                  [dt, s, log](Buffers& b) {
                    Rng rng(8);
                    Values v = rng.uniform(s.rows * s.cols, -5, 5);
                    // Masked entries as causal attention produces (never a whole row).
                    for (size_t i = 3; i < v.size(); i += 7) {
                      if (s.cols > 1 && i % static_cast<size_t>(s.cols) != 0) v[i] = -kInf;
                    }
                    const void* x = b.upload(dt, v);
                    void* y = b.alloc(dt, s.rows * s.cols);
                    softmax_rows_kernel()(b.backend(), dt, x, y, s.rows, s.cols, log);
                    return Outputs{b.download(dt, y, s.rows * s.cols)};
                  });
        t.compare(row_tag(log ? "log_softmax_backward_rows" : "softmax_backward_rows", s, dt),
                  dt, [dt, s, log](Buffers& b) {
                    Rng rng(9);
                    const int64_t n = s.rows * s.cols;
                    const void* y = b.upload(dt, host_softmax(rng.uniform(n, -3, 3), s, log));
                    const void* dy = b.upload(dt, rng.uniform(n, -1, 1));
                    void* dx = b.alloc(dt, n);
                    softmax_backward_rows_kernel()(b.backend(), dt, y, dy, dx, s.rows, s.cols, log);
                    return Outputs{b.download(dt, dx, n)};
                  });
      }
    }
  }
}

void test_cumsum(Runner& t) {
  const RowShape shapes[] = {{5, 700}, {3, 1}, {4, 256}, {2, 257}};
  for (DType dt : kFloatTypes) {
    for (RowShape s : shapes) {
      for (bool exclusive : {false, true}) {
        for (bool reverse : {false, true}) {
          const std::string op = std::string("cumsum_rows") + (exclusive ? " exclusive" : "") +
                                 (reverse ? " reverse" : "");
          t.compare(row_tag(op, s, dt), dt, [dt, s, exclusive, reverse](Buffers& b) {
            Rng rng(10);
            const int64_t n = s.rows * s.cols;
            const void* x = b.upload(dt, rng.uniform(n, -1, 1));
            void* y = b.alloc(dt, n);
            cumsum_rows_kernel()(b.backend(), dt, x, y, s.rows, s.cols, exclusive, reverse);
            return Outputs{b.download(dt, y, n)};
          });
        }
      }
    }
  }
}

void test_causal_mask(Runner& t) {
  struct M {
    int64_t batch, t_q, t_k;
    double value;
  };
  const M cases[] = {{3, 4, 6, -kInf}, {2, 5, 5, -1e9}, {2, 6, 4, 0.0}, {1, 1, 9, -kInf}};
  for (DType dt : kFloatTypes) {
    for (const M& m : cases) {
      char name[96];
      std::snprintf(name, sizeof name, "causal_mask %lldx%lldx%lld value %g",
                    static_cast<long long>(m.batch), static_cast<long long>(m.t_q),
                    static_cast<long long>(m.t_k), m.value);
      t.compare(tag(name, dt), dt, [dt, m](Buffers& b) {
        Rng rng(11);
        const int64_t n = m.batch * m.t_q * m.t_k;
        const void* x = b.upload(dt, rng.uniform(n, -1, 1));
        void* y = b.alloc(dt, n);
        causal_mask_kernel()(b.backend(), dt, x, y, m.batch, m.t_q, m.t_k, m.value);
        return Outputs{b.download(dt, y, n)};
      });
    }
  }
}

// ---- fused layers -------------------------------------------------------------------------

void test_layernorm(Runner& t) {
  const RowShape shapes[] = {{6, 300}, {4, 1}, {3, 1000}, {257, 40}};
  for (DType dt : kFloatTypes) {
    for (RowShape s : shapes) {
      t.compare(row_tag("layernorm_forward", s, dt), dt, [dt, s](Buffers& b) {
        Rng rng(12);
        const int64_t n = s.rows * s.cols;
        const void* x = b.upload(dt, rng.uniform(n, -2, 3));
        const void* w = b.upload(dt, rng.uniform(s.cols, 0.5, 1.5));
        const void* bias = b.upload(dt, rng.uniform(s.cols, -0.5, 0.5));
        void* y = b.alloc(dt, n);
        void* mean = b.alloc(dt, s.rows);
        void* rstd = b.alloc(dt, s.rows);
        layernorm_forward_kernel()(b.backend(), dt, x, w, bias, y, mean, rstd, s.rows, s.cols, 1e-5);
        return Outputs{b.download(dt, y, n), b.download(dt, mean, s.rows),
                       b.download(dt, rstd, s.rows)};
      });
      t.compare(row_tag("layernorm_backward (dweight, dbias +=)", s, dt), dt, [dt, s](Buffers& b) {
        Rng rng(13);
        const int64_t n = s.rows * s.cols;
        const void* x = b.upload(dt, rng.uniform(n, -2, 3));
        const void* w = b.upload(dt, rng.uniform(s.cols, 0.5, 1.5));
        const void* bias = b.upload(dt, rng.uniform(s.cols, -0.5, 0.5));
        const void* dy = b.upload(dt, rng.uniform(n, -1, 1));
        void* dweight = b.upload(dt, rng.uniform(s.cols, -1, 1));  // accumulated into
        void* dbias = b.upload(dt, rng.uniform(s.cols, -1, 1));
        void* y = b.alloc(dt, n);
        void* mean = b.alloc(dt, s.rows);
        void* rstd = b.alloc(dt, s.rows);
        void* dx = b.alloc(dt, n);
        layernorm_forward_kernel()(b.backend(), dt, x, w, bias, y, mean, rstd, s.rows, s.cols, 1e-5);
        layernorm_backward_kernel()(b.backend(), dt, dy, x, w, mean, rstd, dx, dweight, dbias, s.rows,
                                       s.cols);
        return Outputs{b.download(dt, dx, n), b.download(dt, dweight, s.cols),
                       b.download(dt, dbias, s.cols)};
      });
    }
  }
}

void test_embedding(Runner& t) {
  const int64_t vocab = 11, dim = 13, n = 40;  // n > vocab: ids repeat
  for (DType dt : kFloatTypes) {
    t.compare(tag("embedding_forward", dt), dt, [dt](Buffers& b) {
      Rng rng(14);
      const void* w = b.upload(dt, rng.uniform(vocab * dim, -1, 1));
      const int64_t* ids = b.upload_ids(rng.indices(n, vocab));
      void* out = b.alloc(dt, n * dim);
      embedding_forward_kernel()(b.backend(), dt, w, ids, out, n, dim);
      return Outputs{b.download(dt, out, n * dim)};
    });
    t.compare(tag("embedding_backward (+=, repeated ids)", dt), dt, [dt](Buffers& b) {
      Rng rng(15);
      void* dw = b.upload(dt, rng.uniform(vocab * dim, -1, 1));
      const int64_t* ids = b.upload_ids(rng.indices(n, vocab));
      const void* dout = b.upload(dt, rng.uniform(n * dim, -1, 1));
      embedding_backward_kernel()(b.backend(), dt, dout, ids, dw, n, dim);
      return Outputs{b.download(dt, dw, vocab * dim)};
    });
  }
}

void test_cross_entropy(Runner& t) {
  const RowShape shapes[] = {{8, 300}, {5, 3}, {3, 1000}};
  const int64_t ignore = -100;
  for (DType dt : kFloatTypes) {
    for (RowShape s : shapes) {
      // Same targets for both backends; rows 1 and 4 are ignored.
      Rng rng(16);
      std::vector<int64_t> targets = rng.indices(s.rows, s.cols);
      for (int64_t r = 1; r < s.rows; r += 3) targets[static_cast<size_t>(r)] = ignore;
      t.compare(row_tag("cross_entropy_forward (ignore_index)", s, dt), dt,
                [dt, s, targets](Buffers& b) {
                  Rng rng(17);
                  const void* logits = b.upload(dt, rng.uniform(s.rows * s.cols, -4, 4));
                  const int64_t* tg = b.upload_ids(targets);
                  void* loss = b.alloc(dt, s.rows);
                  void* lse = b.alloc(dt, s.rows);
                  cross_entropy_forward_kernel()(b.backend(), dt, logits, tg, loss, lse, s.rows, s.cols,
                                                    ignore);
                  return Outputs{b.download(dt, loss, s.rows), b.download(dt, lse, s.rows)};
                });
      t.compare(row_tag("cross_entropy_backward (ignore_index)", s, dt), dt,
                [dt, s, targets](Buffers& b) {
                  Rng rng(17);
                  const int64_t n = s.rows * s.cols;
                  const void* logits = b.upload(dt, rng.uniform(n, -4, 4));
                  const int64_t* tg = b.upload_ids(targets);
                  void* loss = b.alloc(dt, s.rows);
                  void* lse = b.alloc(dt, s.rows);
                  void* dlogits = b.alloc(dt, n);
                  cross_entropy_forward_kernel()(b.backend(), dt, logits, tg, loss, lse, s.rows, s.cols,
                                                    ignore);
                  cross_entropy_backward_kernel()(b.backend(), dt, logits, tg, lse, dlogits, s.rows, s.cols,
                                                     ignore, 1.0 / 6.0);
                  return Outputs{b.download(dt, dlogits, n)};
                });
    }
  }
}

// ---- attention and positions -----------------------------------------------------------

struct AttnCase {
  const char* what;
  int64_t batch, heads, seq, dim;
  bool alibi, rewired, two_hop, detach;
  int64_t runway_head;
  double beta;
};

runway::AttentionArgs make_attention_args(const AttnCase& c) {
  runway::AttentionArgs a;
  a.batch = c.batch;
  a.heads = c.heads;
  a.seq = c.seq;
  a.head_dim = c.dim;
  a.scale = 1.0 / std::sqrt(static_cast<double>(c.dim));
  if (c.alibi) {
    for (int64_t h = 0; h < c.heads; ++h) a.alibi_slopes.push_back(std::pow(2.0, -1.0 - h));
  }
  a.rewired = c.rewired;
  a.runway_head = c.runway_head;
  a.two_hop = c.two_hop;
  a.beta = c.beta;
  a.detach = c.detach;
  return a;
}

void test_attention(Runner& t) {
  const AttnCase cases[] = {
      {"standard", 2, 3, 7, 5, false, false, false, false, 0, 1.0},
      {"standard alibi", 2, 3, 7, 5, true, false, false, false, 0, 1.0},
      {"absorption", 2, 3, 7, 5, false, true, false, false, 1, 1.0},
      {"absorption alibi beta -0.5", 2, 3, 7, 5, true, true, false, false, 2, -0.5},
      {"absorption detach", 2, 3, 7, 5, false, true, false, true, 1, 1.0},
      {"absorption beta 0", 2, 3, 7, 5, false, true, false, false, 0, 0.0},
      {"two_hop alibi beta 0.7", 2, 3, 7, 5, true, true, true, false, 0, 0.7},
      {"two_hop detach", 2, 3, 7, 5, false, true, true, true, 2, 1.0},
      {"standard long rows", 1, 2, 300, 16, false, false, false, false, 0, 1.0},
      {"absorption long rows", 1, 2, 300, 16, false, true, false, false, 1, 1.0},
      {"two_hop long rows", 1, 2, 300, 16, true, true, true, false, 0, 1.5},
  };
  for (DType dt : kFloatTypes) {
    for (const AttnCase& c : cases) {
      const runway::AttentionArgs args = make_attention_args(c);
      const int64_t n = c.batch * c.heads * c.seq * c.dim;
      const int64_t n_attn = c.batch * c.heads * c.seq * c.seq;
      const int64_t n_pr = c.batch * c.seq * c.seq;
      // Runs the forward on fresh inputs; returns {q, k, v, y, attn, p, r} buffers.
      auto forward = [dt, args, n, n_attn, n_pr, c](Buffers& b, Rng& rng) {
        std::vector<void*> bufs;
        for (int i = 0; i < 3; ++i) bufs.push_back(b.upload(dt, rng.uniform(n, -1.5, 1.5)));
        bufs.push_back(b.alloc(dt, n));
        bufs.push_back(b.alloc(dt, n_attn));
        bufs.push_back(c.rewired ? b.alloc(dt, n_pr) : nullptr);
        bufs.push_back(c.rewired ? b.alloc(dt, n_pr) : nullptr);
        b.backend().attention_forward(dt, args, bufs[0], bufs[1], bufs[2], bufs[3], bufs[4],
                                      bufs[5], bufs[6]);
        return bufs;
      };
      t.compare(tag(std::string("attention_forward ") + c.what, dt), dt, [=](Buffers& b) {
        Rng rng(18);
        const std::vector<void*> f = forward(b, rng);
        Outputs out{b.download(dt, f[3], n), b.download(dt, f[4], n_attn)};
        if (c.rewired) {
          out.push_back(b.download(dt, f[5], n_pr));
          out.push_back(b.download(dt, f[6], n_pr));
        }
        return out;
      });
      t.compare(tag(std::string("attention_backward ") + c.what, dt), dt, [=](Buffers& b) {
        Rng rng(18);
        const std::vector<void*> f = forward(b, rng);
        const void* dy = b.upload(dt, rng.uniform(n, -1, 1));
        void* dq = b.alloc(dt, n);
        void* dk = b.alloc(dt, n);
        void* dv = b.alloc(dt, n);
        b.backend().attention_backward(dt, args, f[0], f[1], f[2], f[4], f[5], dy, dq, dk, dv);
        return Outputs{b.download(dt, dq, n), b.download(dt, dk, n), b.download(dt, dv, n)};
      });
    }
  }
}

void test_rope(Runner& t) {
  struct R {
    int64_t rows, seq, dim, offset;
  };
  const R cases[] = {{3, 9, 8, 0}, {2, 40, 64, 100}, {4, 1, 2, 7}};
  for (DType dt : kFloatTypes) {
    for (const R& c : cases) {
      for (bool inverse : {false, true}) {
        char name[96];
        std::snprintf(name, sizeof name, "rope %lldx%lldx%lld offset %lld%s",
                      static_cast<long long>(c.rows), static_cast<long long>(c.seq),
                      static_cast<long long>(c.dim), static_cast<long long>(c.offset),
                      inverse ? " inverse" : "");
        t.compare(tag(name, dt), dt, [dt, c, inverse](Buffers& b) {
          Rng rng(19);
          const int64_t n = c.rows * c.seq * c.dim;
          const void* x = b.upload(dt, rng.uniform(n, -2, 2));
          void* y = b.alloc(dt, n);
          b.backend().rope(dt, x, y, c.rows, c.seq, c.dim, 10000.0, c.offset, inverse);
          return Outputs{b.download(dt, y, n)};
        });
      }
    }
  }
}

// ---- CUDA-only behaviour ----------------------------------------------------------------------

void test_cuda_specifics(Runner& t, Backend& cuda) {
  {
    void* p = cuda.allocate(1000);
    cuda.deallocate(p);
    void* q = cuda.allocate(1000);
    cuda.deallocate(q);
    t.check("allocator reuses a freed block of the same size", p == q, "");
  }
  t.expect_error("binary with 9 dims is an Error", [](Buffers& b) {
    const Shape s(9, 1);
    BroadcastPlan plan{s, s, s};
    const void* a = b.alloc(DType::Float32, 1);
    void* out = b.alloc(DType::Float32, 1);
    b.backend().binary(BinaryOp::Add, DType::Float32, plan, a, a, out);
  });
  t.expect_error("strided_copy with 9 dims is an Error", [](Buffers& b) {
    StridedView view;
    view.base = b.alloc(DType::Float32, 1);
    view.shape = Shape(9, 1);
    view.strides = Shape(9, 1);
    b.backend().strided_copy(DType::Float32, view, b.alloc(DType::Float32, 1));
  });
  t.expect_error("unary on int64 is an Error", [](Buffers& b) {
    void* x = b.alloc(DType::Int64, 4);
    b.backend().unary(UnaryOp::Exp, DType::Int64, x, x, 4, 0.0);
  });
  t.expect_error("rope with odd dim is an Error", [](Buffers& b) {
    void* x = b.alloc(DType::Float32, 6);
    b.backend().rope(DType::Float32, x, x, 1, 2, 3, 10000.0, 0, false);
  });
  t.expect_error("deallocate of a foreign pointer is an Error", [](Buffers& b) {
    int host = 0;
    b.backend().deallocate(&host);
  });
}

}  // namespace

int main() {
  try {
    runway::load_backends();
    if (runway::testing::skip_without_cuda()) return runway::testing::kSkipExitCode;
    Backend& cpu = runway::backend_for(runway::Device::CPU);
    Backend& cuda = runway::backend_for(runway::Device::CUDA);
    if (auto* cb = dynamic_cast<runway::CudaBackend*>(&cuda)) {
      std::printf("CUDA device %d: %s\n", cb->device_index(), cb->device_description().c_str());
    }
    Runner t(cpu, cuda);
    test_memory(t);
    test_fill(t);
    test_strided_copy(t);
    test_cast(t);
    test_unary(t);
    test_binary(t);
    test_gemm(t);
    test_reductions(t);
    test_softmax(t);
    test_cumsum(t);
    test_causal_mask(t);
    test_layernorm(t);
    test_embedding(t);
    test_cross_entropy(t);
    test_attention(t);
    test_rope(t);
    test_cuda_specifics(t, cuda);
    return t.finish();
  } catch (const std::exception& e) {
    std::printf("FAIL: unexpected exception: %s\n", e.what());
    return 1;
  }
}
