// The CPU backend: plain loops (OpenMP over rows where it pays) and OpenBLAS gemm.
// Every kernel is templated on the element type and instantiated for float and
// double through the dispatch helper below.
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <Eigen/Core>

#include "engine/backend.h"
#include "engine/cpu_attention.h"
#include "engine/tensor.h"  // shape helpers

namespace runway {

namespace {

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

template <typename F>
void dispatch_any(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Int64: f(int64_t{}); return;
  }
}

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCoeff = 0.044715;

template <typename T>
T apply_unary(UnaryOp op, T x, T p) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::ReluGrad: return x > T(0) ? T(1) : T(0);
    case UnaryOp::Gelu: {
      const T u = T(kSqrt2OverPi) * (x + T(kGeluCoeff) * x * x * x);
      return T(0.5) * x * (T(1) + std::tanh(u));
    }
    case UnaryOp::GeluGrad: {
      const T u = T(kSqrt2OverPi) * (x + T(kGeluCoeff) * x * x * x);
      const T t = std::tanh(u);
      const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCoeff) * x * x);
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
    }
    case UnaryOp::AddScalar: return x + p;
    case UnaryOp::MulScalar: return x * p;
    case UnaryOp::PowScalar: return std::pow(x, p);
    case UnaryOp::Abs: return std::abs(x);
  }
  return x;
}

template <typename T>
T apply_binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Equal: return a == b ? T(1) : T(0);
    case BinaryOp::Greater: return a > b ? T(1) : T(0);
  }
  return a;
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

// y[i] = f(x[i]), split over threads for large n. f is a lambda per op so that the
// loop body has no switch and vectorises.
template <typename T, typename F>
void map_unary(const T* in, T* out, int64_t n, F f) {
#pragma omp parallel for if (n > 1 << 15) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = f(in[i]);
}

template <typename T, typename F>
void map_binary(const BroadcastPlan& plan, const void* a, const void* b, void* out, F f) {
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  T* po = static_cast<T*>(out);
  for_each_run(plan, [&](int64_t o, int64_t ao, int64_t bo, int64_t n, int64_t as, int64_t bs) {
    if (as == 1 && bs == 1) {
      for (int64_t i = 0; i < n; ++i) po[o + i] = f(pa[ao + i], pb[bo + i]);
    } else if (as == 1 && bs == 0) {
      const T bv = pb[bo];
      for (int64_t i = 0; i < n; ++i) po[o + i] = f(pa[ao + i], bv);
    } else {
      for (int64_t i = 0; i < n; ++i) po[o + i] = f(pa[ao + i * as], pb[bo + i * bs]);
    }
  });
}

// float32 GELU (tanh form) and/or its derivative over n values, in blocks through Eigen
// arrays, whose float exp is vectorised (libm's scalar tanhf made GELU the largest
// elementwise cost of a training step). With s = sigmoid(2u) = (1 + tanh u) / 2:
//   gelu(x) = x s,   gelu'(x) = s + 2 x s (1 - s) c (1 + 3k x^2)
// which keeps full relative precision in the left tail, where 1 + tanh(u) cancels.
// value and/or derivative may be null.
void gelu_float(const float* in, float* value, float* derivative, int64_t n) {
  // Fixed-size blocks: the temporaries live on the stack (dynamic Eigen arrays were a
  // heap allocation per block) and every expression has a compile-time length.
  constexpr int64_t kBlock = 512;
  using Blk = Eigen::Array<float, kBlock, 1>;
  using Arr = Eigen::Array<float, Eigen::Dynamic, 1>;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const float c = static_cast<float>(kSqrt2OverPi), k = static_cast<float>(kGeluCoeff);
  auto body = [&](const auto& x, int64_t begin, int64_t len) {
    using A = std::decay_t<decltype(x.eval())>;
    const A x2 = x.square();
    const A sig = 1.0f / (1.0f + (-2.0f * c * x * (1.0f + k * x2)).exp());
    if (value) Eigen::Map<A>(value + begin, len) = x * sig;
    if (derivative)
      Eigen::Map<A>(derivative + begin, len) = sig + 2.0f * x * sig * (1.0f - sig) * (c * (1.0f + 3.0f * k * x2));
  };
#pragma omp parallel for if (n > 1 << 14) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kBlock, len = std::min(kBlock, n - begin);
    if (len == kBlock) body(Eigen::Map<const Blk>(in + begin), begin, len);
    else body(Eigen::Map<const Arr>(in + begin, len), begin, len);
  }
}

class CpuBackend final : public Backend {
  // Cache blocks of 64 KiB and more: glibc serves blocks from 128 KiB up with mmap, so
  // without the cache every parameter-sized gradient (128 KiB - 1 MiB in a small model)
  // was page-faulted and zeroed afresh each step.
  static constexpr size_t kCachedMin = size_t(64) << 10;
  static constexpr size_t kCacheLimit = size_t(2) << 30;  // hold at most 2 GiB of free blocks
  std::mutex cache_mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;
  std::unordered_map<void*, size_t> block_sizes_;
  size_t cached_bytes_ = 0;

  void release_cache() {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    for (auto& [size, blocks] : free_blocks_)
      for (void* p : blocks) std::free(p);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

 public:
  // The engine threads gemm itself (see gemm below): OpenBLAS stays in the calling thread.
  CpuBackend() { openblas_set_num_threads(1); }
  ~CpuBackend() override { release_cache(); }
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu (OpenBLAS)"; }

  // Large blocks are cached by size and reused: a training step allocates the same
  // activation sizes every time, and fresh large blocks cost page faults and kernel
  // zeroing on every use. Small blocks go straight to the C allocator.
  void* allocate(size_t nbytes) override {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple of it.
    const size_t rounded = (nbytes + 63) / 64 * 64;
    if (rounded >= kCachedMin) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = free_blocks_.find(rounded);
      if (it != free_blocks_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= rounded;
        block_sizes_[p] = rounded;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, rounded);
    if (!p) {
      release_cache();
      p = std::aligned_alloc(64, rounded);
    }
    if (!p) throw Error(fmt::format("cpu: out of memory allocating {} bytes", nbytes));
    if (rounded >= kCachedMin) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      block_sizes_[p] = rounded;
    }
    return p;
  }
  void deallocate(void* ptr) override {
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = block_sizes_.find(ptr);
      if (it != block_sizes_.end()) {
        const size_t size = it->second;
        block_sizes_.erase(it);
        if (cached_bytes_ + size <= kCacheLimit) {
          free_blocks_[size].push_back(ptr);
          cached_bytes_ += size;
          return;
        }
      }
    }
    std::free(ptr);
  }
  void copy_from_host(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }
  void copy_to_host(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }
  void copy_within(void* dst, const void* src, size_t n) override { std::memmove(dst, src, n); }

  void fill(DType dt, void* dst, int64_t n, double value) override {
    dispatch_any(dt, [&](auto t) {
      using T = decltype(t);
      std::fill_n(static_cast<T*>(dst), n, static_cast<T>(value));
    });
  }

  void strided_copy(DType dt, const StridedView& src, void* dst) override {
    dispatch_any(dt, [&](auto t) {
      using T = decltype(t);
      BroadcastPlan plan{src.shape, src.strides, Shape(src.shape.size(), 0)};
      const T* base = static_cast<const T*>(src.base) + src.offset;
      T* out = static_cast<T*>(dst);
      for_each_run(plan, [&](int64_t o, int64_t a, int64_t, int64_t n, int64_t as, int64_t) {
        if (as == 1) {
          std::memcpy(out + o, base + a, n * sizeof(T));
        } else {
          for (int64_t i = 0; i < n; ++i) out[o + i] = base[a + i * as];
        }
      });
    });
  }

  void cast(DType from, const void* src, DType to, void* dst, int64_t n) override {
    dispatch_any(from, [&](auto f) {
      using F = decltype(f);
      dispatch_any(to, [&](auto t) {
        using T = decltype(t);
        const F* s = static_cast<const F*>(src);
        T* d = static_cast<T*>(dst);
        for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(s[i]);
      });
    });
  }

  void unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) override {
    dispatch_float(dt, "unary", [&](auto t) {
      using T = decltype(t);
      const T* in = static_cast<const T*>(x);
      T* out = static_cast<T*>(y);
      const T p = static_cast<T>(param);
      if constexpr (std::is_same_v<T, float>) {
        // GELU and its derivative dominate the MLP's elementwise time: vectorised tanh.
        if (op == UnaryOp::Gelu || op == UnaryOp::GeluGrad) {
          if (op == UnaryOp::Gelu) gelu_float(in, out, nullptr, n);
          else gelu_float(in, nullptr, out, n);
          return;
        }
      }
      // The switch is hoisted out of the loop (one loop per op) so each loop vectorises.
      switch (op) {
        case UnaryOp::Neg: return map_unary(in, out, n, [](T v) { return -v; });
        case UnaryOp::AddScalar: return map_unary(in, out, n, [p](T v) { return v + p; });
        case UnaryOp::MulScalar: return map_unary(in, out, n, [p](T v) { return v * p; });
        case UnaryOp::Relu: return map_unary(in, out, n, [](T v) { return v > T(0) ? v : T(0); });
        default: return map_unary(in, out, n, [op, p](T v) { return apply_unary<T>(op, v, p); });
      }
    });
  }

  void gelu_forward(DType dt, const void* x, void* y, void* dydx, int64_t n) override {
    if (dt != DType::Float32) return Backend::gelu_forward(dt, x, y, dydx, n);
    gelu_float(static_cast<const float*>(x), static_cast<float*>(y), static_cast<float*>(dydx), n);
  }

  void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b,
              void* out) override {
    dispatch_float(dt, "binary", [&](auto t) {
      using T = decltype(t);
      switch (op) {
        case BinaryOp::Add: return map_binary<T>(plan, a, b, out, [](T u, T v) { return u + v; });
        case BinaryOp::Sub: return map_binary<T>(plan, a, b, out, [](T u, T v) { return u - v; });
        case BinaryOp::Mul: return map_binary<T>(plan, a, b, out, [](T u, T v) { return u * v; });
        case BinaryOp::Div: return map_binary<T>(plan, a, b, out, [](T u, T v) { return u / v; });
        default: return map_binary<T>(plan, a, b, out, [op](T u, T v) { return apply_binary<T>(op, u, v); });
      }
    });
  }

  // OpenBLAS runs single-threaded (see the constructor); the engine splits each product
  // over its OpenMP threads itself: batch items when there are enough of them, else the
  // rows of C (or its columns when C is wide and short), one single-threaded sgemm per
  // part. One thread pool for the whole engine: OpenBLAS's own pool spins (sched_yield)
  // between calls and fought the OpenMP threads of the elementwise kernels for the two
  // cores; single-threaded OpenBLAS can also be called inside OpenMP regions.
  void gemm(DType dt, const GemmArgs& g, const void* a, const void* b, void* c) override {
    gemm_group(dt, {GemmCall{g, a, b, c}});
  }

  // All the products in one parallel region: each thread does its share of each in turn
  // (a region costs a thread wake-up, ~60 us on a 2-vCPU VM under the PASSIVE wait policy,
  // as much as a small product itself). Products too small to split go whole to one
  // thread, taking turns.
  void gemm_group(DType dt, const std::vector<GemmCall>& calls) override {
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

  void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override {
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

  void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override {
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

  void softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols,
                    bool log) override {
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

  void softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx, int64_t rows,
                             int64_t cols, bool log) override {
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

  void cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols, bool exclusive,
                   bool reverse) override {
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

  void causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q, int64_t t_k,
                   double value) override {
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

  void layernorm_forward(DType dt, const void* x, const void* weight, const void* bias, void* y,
                         void* mean, void* rstd, int64_t rows, int64_t cols, double eps) override {
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

  void layernorm_backward(DType dt, const void* dy, const void* x, const void* weight,
                          const void* mean, const void* rstd, void* dx, void* dweight, void* dbias,
                          int64_t rows, int64_t cols) override {
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

  void embedding_forward(DType dt, const void* weight, const int64_t* ids, void* out, int64_t n,
                         int64_t dim) override {
    dispatch_float(dt, "embedding", [&](auto t) {
      using T = decltype(t);
      const T* w = static_cast<const T*>(weight);
      T* o = static_cast<T*>(out);
      for (int64_t r = 0; r < n; ++r) std::memcpy(o + r * dim, w + ids[r] * dim, dim * sizeof(T));
    });
  }

  void embedding_backward(DType dt, const void* dout, const int64_t* ids, void* dweight, int64_t n,
                          int64_t dim) override {
    dispatch_float(dt, "embedding_backward", [&](auto t) {
      using T = decltype(t);
      const T* g = static_cast<const T*>(dout);
      T* dw = static_cast<T*>(dweight);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < dim; ++c) dw[ids[r] * dim + c] += g[r * dim + c];
    });
  }

  void cross_entropy_forward(DType dt, const void* logits, const int64_t* targets, void* loss,
                             void* lse, int64_t rows, int64_t cols, int64_t ignore_index) override {
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

  void cross_entropy_backward(DType dt, const void* logits, const int64_t* targets, const void* lse,
                              void* dlogits, int64_t rows, int64_t cols, int64_t ignore_index,
                              double scale) override {
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

  void attention_forward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                         const void* v, void* y, void* attn, void* p, void* r) override {
    dispatch_float(dt, "attention", [&](auto t) {
      using T = decltype(t);
      cpu::attention_forward<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                                static_cast<const T*>(v), static_cast<T*>(y), static_cast<T*>(attn),
                                static_cast<T*>(p), static_cast<T*>(r));
    });
  }

  void attention_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                          const void* v, const void* attn, const void* p, const void* r,
                          const void* dy, void* dq, void* dk, void* dv) override {
    dispatch_float(dt, "attention_backward", [&](auto t) {
      using T = decltype(t);
      cpu::attention_backward<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                                 static_cast<const T*>(v), static_cast<const T*>(attn),
                                 static_cast<const T*>(p), static_cast<const T*>(r),
                                 static_cast<const T*>(dy), static_cast<T*>(dq), static_cast<T*>(dk),
                                 static_cast<T*>(dv));
    });
  }

  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override {
    dispatch_float(dt, "rope", [&](auto t) {
      using T = decltype(t);
      cpu::rope<T>(static_cast<const T*>(x), static_cast<T*>(y), rows, seq, dim, base,
                   position_offset, inverse);
    });
  }

  void qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base) override {
    dispatch_float(dt, "qkv_to_heads", [&](auto t) {
      using T = decltype(t);
      cpu::qkv_heads<T>(static_cast<const T*>(qkv), static_cast<T*>(heads), batch, seq, n_heads, head_dim,
                        rope_base, /*to_heads=*/true);
    });
  }

  void heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t batch, int64_t seq, int64_t n_heads,
                    int64_t head_dim, double rope_base) override {
    dispatch_float(dt, "heads_to_qkv", [&](auto t) {
      using T = decltype(t);
      cpu::qkv_heads<T>(static_cast<const T*>(dheads), static_cast<T*>(dqkv), batch, seq, n_heads, head_dim,
                        rope_base, /*to_heads=*/false);
    });
  }
};

struct Registry {
  std::mutex mutex;
  Backend* backends[2] = {nullptr, nullptr};
  std::string unavailable[2];
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void Backend::qkv_to_heads(DType dt, const void* qkv, void* heads, int64_t B, int64_t T, int64_t H, int64_t D,
                           double rope_base) {
  const int64_t C = H * D;
  if (B * T * C == 0) return;
  strided_copy(dt, StridedView{qkv, {3, B, H, T, D}, {C, T * 3 * C, D, 3 * C, 1}, 0}, heads);
  if (rope_base > 0) rope(dt, heads, heads, 2 * B * H, T, D, rope_base, 0, false);
}

void Backend::heads_to_qkv(DType dt, void* dheads, void* dqkv, int64_t B, int64_t T, int64_t H, int64_t D,
                           double rope_base) {
  const int64_t C = H * D, part = B * T * C;
  if (part == 0) return;
  if (rope_base > 0) rope(dt, dheads, dheads, 2 * B * H, T, D, rope_base, 0, true);
  strided_copy(dt, StridedView{dheads, {B, T, 3, H, D}, {H * T * D, D, part, T * D, 1}, 0}, dqkv);
}

void check_row_init(const GemmArgs& g) {
  if (g.row_init && (g.ldc != g.n || (g.batch > 1 && g.stride_c != g.m * g.n)))
    throw Error(fmt::format("gemm: row_init needs a contiguous C (ldc = n = {}, stride_c = m n = {}); got "
                            "ldc {}, stride_c {}", g.n, g.m * g.n, g.ldc, g.stride_c));
}

Backend& backend_for(Device device) {
  static CpuBackend cpu;
  if (device == Device::CPU) return cpu;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  Backend* b = r.backends[static_cast<int>(device)];
  if (!b) {
    const std::string& why = r.unavailable[static_cast<int>(device)];
    throw Error(fmt::format("no {} backend: {}", device_name(device),
                            why.empty() ? "this build of runway has no CUDA support (configure "
                                          "with -DRUNWAY_CUDA=ON) or load_backends() was not called"
                                        : why));
  }
  return *b;
}

void register_backend(Backend* backend) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.backends[static_cast<int>(backend->device())] = backend;
}

void note_backend_unavailable(Device device, const std::string& reason) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.unavailable[static_cast<int>(device)] = reason;
}

bool backend_available(Device device) {
  if (device == Device::CPU) return true;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.backends[static_cast<int>(device)] != nullptr;
}

}  // namespace runway
