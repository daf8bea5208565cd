// Elementwise ops. Binary, broadcasting: add, sub, mul, div, pow. Unary: neg,
// add_scalar, mul_scalar, pow_scalar, exp, log, sqrt, tanh, sigmoid, relu, gelu. And
// dropout (a product with a random mask).
//
// Per op: the forward, the backward beside it with its formula, then (further down)
// the family's gradcheck rows and its CPU kernels (CpuBackend::unary, binary; the fused
// kernel gelu_forward, engine/fused_kernel.h, with its CPU implementation and its default).
// The CUDA kernels: cuda/ops/elementwise.cu. Map: docs/architecture.md.
//
// Gradients of the binary ops come back in the output (broadcast) shape; the autograd
// engine sums them back to each input's shape (sum_to in engine/autograd.cpp).

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
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
#include "engine/random.h"

namespace runway {

using namespace op_helpers;
using cpu::dispatch_any;
using cpu::dispatch_float;
using cpu::for_each_run;

// =====================================================================================
// Elementwise, broadcasting. Gradients come back in the output shape; the engine
// un-broadcasts them (sum_to).
// =====================================================================================

static const OpName kAdd = declare_op("add");
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Add, a, b, "add");
  // out = a + b: da = g, db = g (no saved values)
  return record(kAdd, out, {a, b}, [](const Tensor& g) -> Grads { return {g, g}; });
}

static const OpName kSub = declare_op("sub");
Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Sub, a, b, "sub");
  // out = a - b: da = g, db = -g (no saved values)
  return record(kSub, out, {a, b}, [](const Tensor& g) -> Grads { return {g, neg(g)}; });
}

static const OpName kMul = declare_op("mul");
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Mul, a, b, "mul");
  // out = a * b: da = g * b, db = g * a (uses the inputs a, b)
  return record(kMul, out, {a, b}, [a = a.detach(), b = b.detach()](const Tensor& g) -> Grads {
    return {mul(g, b), mul(g, a)};
  });
}

static const OpName kDiv = declare_op("div");
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Div, a, b, "div");
  // d(a/b)/da = 1/b; d(a/b)/db = -a/b^2 = -out/b  (uses the forward output)
  return record(kDiv, out, {a, b}, [b = b.detach(), out = out.detach()](const Tensor& g) -> Grads {
    Tensor ga = div(g, b);
    return {ga, neg(mul(ga, out))};
  });
}

static const OpName kPow = declare_op("pow");
Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Pow, a, b, "pow");
  // d(a^b)/da = b a^(b-1); d(a^b)/db = a^b log(a)  (needs a > 0)
  // log(a) is only taken when b needs a gradient, so a <= 0 is fine otherwise.
  return record(kPow, out, {a, b},
                [a = a.detach(), b = b.detach(), out = out.detach(),
                 b_needs_grad = b.requires_grad()](const Tensor& g) -> Grads {
                  Tensor ga = mul(g, mul(b, pow(a, add_scalar(b, -1.0))));
                  return {ga, b_needs_grad ? mul(g, mul(out, log(a))) : Tensor()};
                });
}

// =====================================================================================
// Elementwise, unary.
// =====================================================================================

static const OpName kNeg = declare_op("neg");
Tensor neg(const Tensor& x) {
  require_float(x, "neg");
  Tensor out = unary_raw(UnaryOp::Neg, x);
  // dx = -g
  return record(kNeg, out, {x}, [](const Tensor& g) -> Grads { return {neg(g)}; });
}

static const OpName kAddScalar = declare_op("add_scalar");
Tensor add_scalar(const Tensor& x, double s) {
  require_float(x, "add_scalar");
  Tensor out = unary_raw(UnaryOp::AddScalar, x, s);
  // dx = g
  return record(kAddScalar, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

static const OpName kMulScalar = declare_op("mul_scalar");
Tensor mul_scalar(const Tensor& x, double s) {
  require_float(x, "mul_scalar");
  Tensor out = unary_raw(UnaryOp::MulScalar, x, s);
  // dx = g * s
  return record(kMulScalar, out, {x}, [s](const Tensor& g) -> Grads { return {mul_scalar(g, s)}; });
}

static const OpName kPowScalar = declare_op("pow_scalar");
Tensor pow_scalar(const Tensor& x, double p) {
  require_float(x, "pow_scalar");
  Tensor out = unary_raw(UnaryOp::PowScalar, x, p);
  // d(x^p)/dx = p x^(p-1)
  return record(kPowScalar, out, {x}, [x = x.detach(), p](const Tensor& g) -> Grads {
    return {mul(g, mul_scalar(pow_scalar(x, p - 1.0), p))};
  });
}

static const OpName kExp = declare_op("exp");
Tensor exp(const Tensor& x) {
  require_float(x, "exp");
  Tensor out = unary_raw(UnaryOp::Exp, x);
  // d exp(x) = exp(x): uses the forward output
  return record(kExp, out, {x}, [y = out.detach()](const Tensor& g) -> Grads { return {mul(g, y)}; });
}

static const OpName kLog = declare_op("log");
Tensor log(const Tensor& x) {
  require_float(x, "log");
  Tensor out = unary_raw(UnaryOp::Log, x);
  // d log(x) = 1 / x: dx = g / x (uses the input x)
  return record(kLog, out, {x}, [x = x.detach()](const Tensor& g) -> Grads { return {div(g, x)}; });
}

static const OpName kSqrt = declare_op("sqrt");
Tensor sqrt(const Tensor& x) {
  require_float(x, "sqrt");
  Tensor out = unary_raw(UnaryOp::Sqrt, x);
  // d sqrt(x) = 1 / (2 sqrt(x)): uses the forward output
  return record(kSqrt, out, {x}, [y = out.detach()](const Tensor& g) -> Grads {
    return {mul_scalar(div(g, y), 0.5)};
  });
}

static const OpName kTanh = declare_op("tanh");
Tensor tanh(const Tensor& x) {
  require_float(x, "tanh");
  Tensor out = unary_raw(UnaryOp::Tanh, x);
  // d tanh(x) = 1 - tanh(x)^2: uses the forward output
  return record(kTanh, out, {x}, [y = out.detach()](const Tensor& g) -> Grads {
    return {mul(g, add_scalar(neg(mul(y, y)), 1.0))};
  });
}

static const OpName kSigmoid = declare_op("sigmoid");
Tensor sigmoid(const Tensor& x) {
  require_float(x, "sigmoid");
  Tensor out = unary_raw(UnaryOp::Sigmoid, x);
  // d sigmoid(x) = s (1 - s): uses the forward output
  return record(kSigmoid, out, {x}, [y = out.detach()](const Tensor& g) -> Grads {
    return {mul(g, mul(y, add_scalar(neg(y), 1.0)))};
  });
}

static const OpName kRelu = declare_op("relu");
Tensor relu(const Tensor& x) {
  require_float(x, "relu");
  Tensor out = unary_raw(UnaryOp::Relu, x);
  // relu'(x) = [x > 0] (0 at x = 0, as PyTorch)
  return record(kRelu, out, {x}, [x = x.detach()](const Tensor& g) -> Grads {
    return {mul(g, unary_raw(UnaryOp::ReluGrad, x))};
  });
}

// The fused kernel gelu_forward (engine/fused_kernel.h): y = gelu_tanh(x) and, when dydx
// is not null, dydx = gelu_tanh'(x) for the backward, from one evaluation of the tanh, over
// n elements. The default makes the two unary calls; the CPU implementation (float32: one
// pass; float64: the default) is below. CUDA registers none: it runs the default.
static void gelu_forward_default(Backend& b, DType dt, const void* x, void* y, void* dydx, int64_t n) {
  b.unary(UnaryOp::Gelu, dt, x, y, n, 0.0);
  if (dydx) b.unary(UnaryOp::GeluGrad, dt, x, dydx, n, 0.0);
}
static void cpu_gelu_forward(Backend& b, DType dt, const void* x, void* y, void* dydx, int64_t n);
static const FusedKernel<DType, const void*, void*, void*, int64_t> gelu_forward_kernel(
    "gelu_forward", &gelu_forward_default, &cpu_gelu_forward);

static const OpName kGelu = declare_op("gelu");
Tensor gelu(const Tensor& x) {
  require_float(x, "gelu");
  // gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3);
  // gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi)(1 + 3*0.044715 x^2)
  // The forward keeps gelu'(x) when a backward will need it (one tanh per element
  // instead of two; the backward is then one multiply).
  Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const bool keep_derivative = grad_mode_enabled() && x.requires_grad();
  Tensor derivative = keep_derivative ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  gelu_forward_kernel(be(x), x.dtype(), xc.raw_data(), out.raw_data(),
                      keep_derivative ? derivative.raw_data() : nullptr, x.numel());
  return record(kGelu, out, {x}, [derivative](const Tensor& g) -> Grads {
    return {binary_raw(BinaryOp::Mul, g, derivative, "gelu backward")};  // g * gelu'(x)
  });
}

static const OpName kDropout = declare_op("dropout");
Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) {
  require_float(x, "dropout");
  if (!(p >= 0.0 && p < 1.0)) throw Error(fmt::format("dropout: p must be in [0, 1), got {}", p));
  if (!training || p == 0.0) return x;
  // The mask is drawn on the host in row-major order, so a seed gives the same mask
  // on every device.
  std::vector<double> m(x.numel());
  const double keep_scale = 1.0 / (1.0 - p);
  for (double& v : m) v = gen.uniform01() >= p ? keep_scale : 0.0;
  Tensor mask = Tensor::from_vector(m, x.shape(), x.dtype()).to(x.device());
  Tensor out = binary_raw(BinaryOp::Mul, x, mask, "dropout");
  return record(kDropout, out, {x}, [mask](const Tensor& g) -> Grads { return {mul(g, mask)}; });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> elementwise_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("add", "a + b (broadcasting)", binary_fn(add), [] { return binary_samples(-1, 1); }));
  t.push_back(op_entry("sub", "a - b (broadcasting)", binary_fn(sub), [] { return binary_samples(-1, 1); }));
  t.push_back(op_entry("mul", "a * b (broadcasting)", binary_fn(mul), [] { return binary_samples(-1, 1); }));
  t.push_back(op_entry("div", "a / b (broadcasting), b in [0.5, 2]", binary_fn(div), [] {
               Samples s = binary_samples(0.5, 2.0);
               for (auto& x : s) x.inputs[0] = mul_scalar(add_scalar(x.inputs[0], -1.0), 2.0);
               return s;
             }));
  t.push_back(op_entry("pow", "a ^ b (broadcasting), a in [0.5, 2] so log(a) exists", binary_fn(pow),
             [] { return binary_samples(0.5, 2.0); }));
  t.push_back(op_entry("neg", "-x", unary_fn(neg), [] { return unary_samples(-1, 1); }));
  t.push_back(op_entry("add_scalar", "x + 0.75", [](const std::vector<Tensor>& x) { return add_scalar(x[0], 0.75); },
             [] { return unary_samples(-1, 1); }));
  t.push_back(op_entry("mul_scalar", "x * -1.5", [](const std::vector<Tensor>& x) { return mul_scalar(x[0], -1.5); },
             [] { return unary_samples(-1, 1); }));
  t.push_back(op_entry("pow_scalar", "x ^ 2.5 and x ^ -1, x in [0.5, 2]",
             [](const std::vector<Tensor>& x) { return add(pow_scalar(x[0], 2.5), pow_scalar(x[0], -1.0)); },
             [] { return unary_samples(0.5, 2.0); }));
  t.push_back(op_entry("exp", "exp(x)", unary_fn(exp), [] { return unary_samples(-2, 2); }));
  t.push_back(op_entry("log", "log(x), x in [0.2, 3]", unary_fn(log), [] { return unary_samples(0.2, 3.0); }));
  t.push_back(op_entry("sqrt", "sqrt(x), x in [0.2, 3]", unary_fn(sqrt), [] { return unary_samples(0.2, 3.0); }));
  t.push_back(op_entry("tanh", "tanh(x)", unary_fn(tanh), [] { return unary_samples(-2, 2); }));
  t.push_back(op_entry("sigmoid", "sigmoid(x)", unary_fn(sigmoid), [] { return unary_samples(-3, 3); }));
  t.push_back(op_entry("relu", "relu(x), |x| >= 0.1 (no kink)", unary_fn(relu), away_samples));
  t.push_back(op_entry("gelu", "gelu(x), tanh approximation", unary_fn(gelu), [] { return unary_samples(-3, 3); }));
  t.push_back(op_entry("dropout", "dropout p=0.3 with a fixed seed (same mask each evaluation)",
             [](const std::vector<Tensor>& x) {
               Generator gen(7);
               return dropout(x[0], 0.3, gen, true);
             },
             [] { return Samples{{"(4,5)", {rnd({4, 5}, 121)}, {}}, threaded("(257,259)", {rnd({257, 259}, 122)})}; }));
  return t;
}

// =====================================================================================
// Reference CPU kernels (engine/cpu_reference.h): plain loops in double, the math of the
// tuned kernels below; tests/test_threaded_kernels.cpp holds the two equal.
// =====================================================================================

namespace cpu::reference {

double unary(UnaryOp op, double x, double p) {
  constexpr double kPi = 3.141592653589793;
  const double c = std::sqrt(2.0 / kPi), u = c * (x + 0.044715 * x * x * x);
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case UnaryOp::Relu: return x > 0 ? x : 0.0;
    case UnaryOp::ReluGrad: return x > 0 ? 1.0 : 0.0;
    case UnaryOp::Gelu: return 0.5 * x * (1.0 + std::tanh(u));
    case UnaryOp::GeluGrad: {
      // d/dx 0.5 x (1 + tanh u) = 0.5 (1 + tanh u) + 0.5 x sech^2(u) du/dx
      const double sech2 = 1.0 / (std::cosh(u) * std::cosh(u));
      return 0.5 * (1.0 + std::tanh(u)) + 0.5 * x * sech2 * c * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case UnaryOp::AddScalar: return x + p;
    case UnaryOp::MulScalar: return x * p;
    case UnaryOp::PowScalar: return std::pow(x, p);
  }
  return NAN;
}

double binary(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Equal: return a == b ? 1.0 : 0.0;
  }
  return NAN;
}

}  // namespace cpu::reference

// =====================================================================================
// CPU kernels (CpuBackend, engine/cpu_backend.h).
// =====================================================================================

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCoeff = 0.044715;
}  // namespace

namespace {

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
  }
  return a;
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

}  // namespace

void CpuBackend::unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) {
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

// gelu_forward's CPU implementation.
static void cpu_gelu_forward(Backend& b, DType dt, const void* x, void* y, void* dydx, int64_t n) {
  if (dt != DType::Float32) return gelu_forward_default(b, dt, x, y, dydx, n);
  gelu_float(static_cast<const float*>(x), static_cast<float*>(y), static_cast<float*>(dydx), n);
}

void CpuBackend::binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b,
            void* out) {
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

}  // namespace runway
