// The differentiable ops: each op's forward and backward side by side.
//
// Reading guide (the style of PyTorch's derivatives.yaml): every op is
//
//   static const OpName kFoo = declare_op("foo");
//   Tensor foo(x) {
//     ... forward through the backend ...
//     return record(kFoo, out, {x}, [saved...](const Tensor& g) -> Grads {
//       return {formula for dL/dx in terms of g and saved forward values};
//     });
//   }
//
// Backward formulas run with grad mode off and are written with these same ops.
// They may return a gradient of the broadcast (output) shape: the autograd engine
// sums it back to the input's shape in one place (sum_to in autograd.cpp).
// Saved forward values are captured detached (x.detach()), never the output itself.
#include "engine/ops.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/random.h"

namespace runway {

namespace {

// ---- helpers: validation, views, dispatch -----------------------------------------

void require_float(const Tensor& x, const char* op) {
  if (!x.defined()) throw Error(fmt::format("{}: input tensor is undefined", op));
  if (!is_floating(x.dtype()))
    throw Error(fmt::format("{}: expected a float32 or float64 tensor, got {} of shape {}", op,
                            dtype_name(x.dtype()), x.shape_str()));
}

void require_same(const Tensor& a, const Tensor& b, const char* op) {
  require_float(a, op);
  require_float(b, op);
  if (a.dtype() != b.dtype())
    throw Error(fmt::format("{}: dtype mismatch: {} {} vs {} {}", op, a.shape_str(),
                            dtype_name(a.dtype()), b.shape_str(), dtype_name(b.dtype())));
  if (a.device() != b.device())
    throw Error(fmt::format("{}: device mismatch: {} on {} vs {} on {}", op, a.shape_str(),
                            device_name(a.device()), b.shape_str(), device_name(b.device())));
}

Backend& be(const Tensor& x) { return backend_for(x.device()); }

// A new tensor sharing x's storage with the given geometry and no history.
Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.impl()->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(impl);
}

// Strides of x aligned to a broadcast `out` shape: 0 on dims x does not have or
// has with size 1.
Shape broadcast_strides(const Tensor& x, const Shape& out) {
  Shape s(out.size(), 0);
  const size_t lead = out.size() - x.shape().size();
  for (size_t i = 0; i < x.shape().size(); ++i)
    s[lead + i] = x.shape()[i] == 1 ? 0 : x.strides()[i];
  return s;
}

Tensor unary_raw(UnaryOp op, const Tensor& x, double param = 0.0) {
  Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(x).unary(op, x.dtype(), in.raw_data(), out.raw_data(), x.numel(), param);
  return out;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  require_same(a, b, name);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), name);
  BroadcastPlan plan{out_shape, broadcast_strides(a, out_shape), broadcast_strides(b, out_shape)};
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  be(a).binary(op, a.dtype(), plan, a.raw_data(), b.raw_data(), out.raw_data());
  return out;
}

// Moves `dim` to the last position (a view) so row kernels can work on it.
Tensor dim_to_last(const Tensor& x, int64_t dim) {
  return dim == x.dim() - 1 ? x : transpose(x, dim, x.dim() - 1);
}

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t rank,
                                    const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    out.resize(rank);
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  for (int64_t d : dims) {
    const int64_t n = normalize_dim(d, rank, op);
    if (std::find(out.begin(), out.end(), n) != out.end())
      throw Error(fmt::format("{}: dim {} given twice", op, d));
    out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Reduces `dims` of x with a row kernel: permutes kept dims first and reduced dims
// last, then one kernel call over rows. Returns the keepdim-shaped result.
template <typename RowKernel>
Tensor reduce_raw(const Tensor& x, const std::vector<int64_t>& dims, RowKernel kernel) {
  std::vector<int64_t> order;
  Shape keep_shape = x.shape();
  int64_t cols = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) order.push_back(d);
  for (int64_t d : dims) {
    order.push_back(d);
    cols *= x.shape()[d];
    keep_shape[d] = 1;
  }
  Tensor arranged = x.dim() ? permute(x, order).contiguous() : x.contiguous();
  Tensor out = Tensor::empty(keep_shape, x.dtype(), x.device());
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  kernel(arranged, out, rows, cols);
  return out;
}

Shape drop_dims(const Shape& keep_shape, const std::vector<int64_t>& dims) {
  Shape s;
  for (int64_t d = 0; d < static_cast<int64_t>(keep_shape.size()); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) s.push_back(keep_shape[d]);
  return s;
}

Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims) {
  Shape s = shape;
  for (int64_t d : dims) s[d] = 1;
  return s;
}

}  // namespace

// =====================================================================================
// Elementwise, broadcasting. Gradients come back in the output shape; the engine
// un-broadcasts them (sum_to).
// =====================================================================================

static const OpName kAdd = declare_op("add");
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Add, a, b, "add");
  return record(kAdd, out, {a, b}, [](const Tensor& g) -> Grads { return {g, g}; });
}

static const OpName kSub = declare_op("sub");
Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Sub, a, b, "sub");
  return record(kSub, out, {a, b}, [](const Tensor& g) -> Grads { return {g, neg(g)}; });
}

static const OpName kMul = declare_op("mul");
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Mul, a, b, "mul");
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
  return record(kNeg, out, {x}, [](const Tensor& g) -> Grads { return {neg(g)}; });
}

static const OpName kAddScalar = declare_op("add_scalar");
Tensor add_scalar(const Tensor& x, double s) {
  require_float(x, "add_scalar");
  Tensor out = unary_raw(UnaryOp::AddScalar, x, s);
  return record(kAddScalar, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

static const OpName kMulScalar = declare_op("mul_scalar");
Tensor mul_scalar(const Tensor& x, double s) {
  require_float(x, "mul_scalar");
  Tensor out = unary_raw(UnaryOp::MulScalar, x, s);
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
  be(x).gelu_forward(x.dtype(), xc.raw_data(), out.raw_data(), keep_derivative ? derivative.raw_data() : nullptr,
                     x.numel());
  return record(kGelu, out, {x}, [derivative](const Tensor& g) -> Grads {
    return {binary_raw(BinaryOp::Mul, g, derivative, "gelu backward")};  // g * gelu'(x)
  });
}

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
                  be(xc).gemm_group(xc.dtype(), calls);
                  return grads;
                });
}

// =====================================================================================
// Shape ops. Views share storage; their backward maps the gradient back.
// =====================================================================================

static const OpName kReshape = declare_op("reshape");
Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer != -1) throw Error(fmt::format("reshape: more than one -1 in {}", shape_to_string(shape)));
      infer = static_cast<int64_t>(i);
    } else if (s[i] < 0) {
      throw Error(fmt::format("reshape: invalid size {} in {}", s[i], shape_to_string(shape)));
    } else {
      known *= s[i];
    }
  }
  if (infer != -1) {
    if (known == 0 || x.numel() % known != 0)
      throw Error(fmt::format("reshape: cannot reshape {} into {}", x.shape_str(), shape_to_string(shape)));
    s[infer] = x.numel() / known;
  }
  if (shape_numel(s) != x.numel())
    throw Error(fmt::format("reshape: cannot reshape {} ({} elements) into {} ({} elements)",
                            x.shape_str(), x.numel(), shape_to_string(s), shape_numel(s)));
  if (s == x.shape()) return x;
  Tensor base = x.is_contiguous() ? x : copy(x);
  Tensor out = make_view(base, s, contiguous_strides(s), base.offset());
  return record(kReshape, out, {x}, [in_shape = x.shape()](const Tensor& g) -> Grads {
    return {reshape(g, in_shape)};
  });
}

static const OpName kPermute = declare_op("permute");
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  if (static_cast<int64_t>(dims.size()) != x.dim())
    throw Error(fmt::format("permute: {} dims given for a tensor of shape {}", dims.size(), x.shape_str()));
  std::vector<int64_t> norm(dims.size()), inverse(dims.size());
  std::vector<bool> used(dims.size(), false);
  Shape shape(dims.size()), strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = normalize_dim(dims[i], x.dim(), "permute");
    if (used[d]) throw Error(fmt::format("permute: dim {} repeated", dims[i]));
    used[d] = true;
    norm[i] = d;
    inverse[d] = static_cast<int64_t>(i);
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  return record(kPermute, out, {x}, [inverse](const Tensor& g) -> Grads { return {permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[normalize_dim(d0, x.dim(), "transpose")], dims[normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

static const OpName kSlice = declare_op("slice");
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  const int64_t d = normalize_dim(dim, x.dim(), "slice");
  const int64_t n = x.shape()[d];
  if (start < 0 || end < start || end > n)
    throw Error(fmt::format("slice: range [{}, {}) is invalid for dim {} of size {} (shape {})",
                            start, end, d, n, x.shape_str()));
  Shape shape = x.shape();
  shape[d] = end - start;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  // The gradient is g in the sliced range and zero outside it.
  return record(kSlice, out, {x}, [d, start, end, in_shape = x.shape()](const Tensor& g) -> Grads {
    std::vector<Tensor> parts;
    Shape before = in_shape, after = in_shape;
    before[d] = start;
    after[d] = in_shape[d] - end;
    if (start > 0) parts.push_back(Tensor::zeros(before, g.dtype(), g.device()));
    parts.push_back(g);
    if (end < in_shape[d]) parts.push_back(Tensor::zeros(after, g.dtype(), g.device()));
    return {parts.size() == 1 ? g : concat(parts, d)};
  });
}

static const OpName kExpand = declare_op("expand");
Tensor expand(const Tensor& x, const Shape& shape) {
  const Shape out_shape = broadcast_shapes(x.shape(), shape, "expand");
  if (out_shape != shape)
    throw Error(fmt::format("expand: {} cannot be expanded to {}", x.shape_str(), shape_to_string(shape)));
  if (shape == x.shape()) return x;
  Tensor out = make_view(x, shape, broadcast_strides(x, shape), x.offset());
  // The engine's sum_to folds the expanded gradient back.
  return record(kExpand, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

static const OpName kCopy = declare_op("copy");
Tensor copy(const Tensor& x) {
  if (!x.defined()) throw Error("copy: input tensor is undefined");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  StridedView view{x.impl()->storage->data, x.shape(), x.strides(), x.offset()};
  be(x).strided_copy(x.dtype(), view, out.raw_data());
  return record(kCopy, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : copy(x); }

static const OpName kConcat = declare_op("concat");
Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) throw Error("concat: no tensors given");
  const int64_t d = normalize_dim(dim, xs[0].dim(), "concat");
  Shape out_shape = xs[0].shape();
  out_shape[d] = 0;
  for (const auto& x : xs) {
    if (x.dtype() != xs[0].dtype() || x.device() != xs[0].device() || x.dim() != xs[0].dim())
      throw Error(fmt::format("concat: {} {} does not match {} {}", x.shape_str(), dtype_name(x.dtype()),
                              xs[0].shape_str(), dtype_name(xs[0].dtype())));
    for (int64_t i = 0; i < x.dim(); ++i)
      if (i != d && x.shape()[i] != xs[0].shape()[i])
        throw Error(fmt::format("concat: shapes {} and {} differ outside dim {}", x.shape_str(),
                                xs[0].shape_str(), d));
    out_shape[d] += x.shape()[d];
  }
  // Concatenating along dim 0 of contiguous buffers is back-to-back copies: move `d`
  // to the front, copy, and move it back.
  std::vector<int64_t> front(out_shape.size());
  std::iota(front.begin(), front.end(), 0);
  std::swap(front[0], front[d]);
  Shape t_shape = out_shape;
  std::swap(t_shape[0], t_shape[d]);
  Tensor stacked = Tensor::empty(t_shape, xs[0].dtype(), xs[0].device());
  size_t offset_bytes = 0;
  {
    NoGradGuard no_grad;
    for (const auto& x : xs) {
      Tensor part = permute(x.detach(), front).contiguous();
      const size_t nbytes = part.numel() * dtype_size(part.dtype());
      if (nbytes) be(x).copy_within(static_cast<char*>(stacked.raw_data()) + offset_bytes, part.raw_data(), nbytes);
      offset_bytes += nbytes;
    }
  }
  Tensor out = d == 0 ? stacked : permute(stacked, front).contiguous().detach();
  std::vector<int64_t> sizes;
  for (const auto& x : xs) sizes.push_back(x.shape()[d]);
  return record(kConcat, out, xs, [d, sizes](const Tensor& g) -> Grads { return split(g, sizes, d); });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) throw Error(fmt::format("split: negative size {}", s));
    total += s;
  }
  if (total != x.shape()[d])
    throw Error(fmt::format("split: sizes sum to {} but dim {} of {} has size {}", total, d,
                            x.shape_str(), x.shape()[d]));
  std::vector<Tensor> parts;
  int64_t start = 0;
  for (int64_t s : sizes) {
    parts.push_back(slice(x, d, start, start + s));
    start += s;
  }
  return parts;
}

// =====================================================================================
// Reductions.
// =====================================================================================

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

// =====================================================================================
// Softmax family, masking, layernorm, cumsum: row kernels over one dim.
// =====================================================================================

namespace {
// Runs a row kernel over `dim` of x, returning the result laid out like x.
template <typename RowKernel>
Tensor along_dim(const Tensor& x, int64_t dim, RowKernel kernel) {
  Tensor moved = dim_to_last(x, dim).detach().contiguous();
  Tensor out = Tensor::empty(moved.shape(), x.dtype(), x.device());
  const int64_t cols = moved.dim() ? moved.size(-1) : 1;
  const int64_t rows = cols ? moved.numel() / cols : 0;
  if (moved.numel()) kernel(moved, out, rows, cols);
  return dim_to_last(out, dim);
}
}  // namespace

static const OpName kSoftmax = declare_op("softmax");
Tensor softmax(const Tensor& x, int64_t dim) {
  require_float(x, "softmax");
  const int64_t d = normalize_dim(dim, x.dim(), "softmax");
  Tensor out = along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    be(x).softmax_rows(x.dtype(), in.raw_data(), o.raw_data(), rows, cols, false);
  });
  // dx = y * (g - sum(g * y)): uses the forward output y
  return record(kSoftmax, out, {x}, [d, y = out.detach()](const Tensor& g) -> Grads {
    Tensor yl = dim_to_last(y, d).contiguous();
    return {along_dim(g, d, [&](const Tensor& gl, Tensor& o, int64_t rows, int64_t cols) {
      be(g).softmax_backward_rows(g.dtype(), yl.raw_data(), gl.raw_data(), o.raw_data(), rows, cols, false);
    })};
  });
}

static const OpName kLogSoftmax = declare_op("log_softmax");
Tensor log_softmax(const Tensor& x, int64_t dim) {
  require_float(x, "log_softmax");
  const int64_t d = normalize_dim(dim, x.dim(), "log_softmax");
  Tensor out = along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    be(x).softmax_rows(x.dtype(), in.raw_data(), o.raw_data(), rows, cols, true);
  });
  // dx = g - exp(y) * sum(g): uses the forward output y = log_softmax(x)
  return record(kLogSoftmax, out, {x}, [d, y = out.detach()](const Tensor& g) -> Grads {
    Tensor yl = dim_to_last(y, d).contiguous();
    return {along_dim(g, d, [&](const Tensor& gl, Tensor& o, int64_t rows, int64_t cols) {
      be(g).softmax_backward_rows(g.dtype(), yl.raw_data(), gl.raw_data(), o.raw_data(), rows, cols, true);
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
    be(x).causal_mask(x.dtype(), in.raw_data(), out.raw_data(), x.numel() / (tq * tk), tq, tk, value);
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
    be(x).layernorm_forward(x.dtype(), xc.raw_data(), w.raw_data(), b.raw_data(), out.raw_data(),
                            mean_t.raw_data(), rstd_t.raw_data(), rows, cols, eps);
  // Uses x, weight and the saved per-row mean and rstd (see the kernel for the formula).
  return record(kLayernorm, out, {x, weight, bias},
                [xc, w, mean_t, rstd_t, rows, cols](const Tensor& g) -> Grads {
                  Tensor gc = g.contiguous();
                  Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
                  Tensor dw = Tensor::zeros({cols}, xc.dtype(), xc.device());
                  Tensor db = Tensor::zeros({cols}, xc.dtype(), xc.device());
                  if (rows)
                    be(xc).layernorm_backward(xc.dtype(), gc.raw_data(), xc.raw_data(), w.raw_data(),
                                              mean_t.raw_data(), rstd_t.raw_data(), dx.raw_data(),
                                              dw.raw_data(), db.raw_data(), rows, cols);
                  return {dx, dw, db};
                });
}

namespace {
Tensor cumsum_raw(const Tensor& x, int64_t d, bool exclusive, bool reverse) {
  return along_dim(x, d, [&](const Tensor& in, Tensor& o, int64_t rows, int64_t cols) {
    be(x).cumsum_rows(x.dtype(), in.raw_data(), o.raw_data(), rows, cols, exclusive, reverse);
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
// Lookup and losses.
// =====================================================================================

namespace {
// Every index must be in [0, limit), except `ignored` (when has_ignored) is allowed.
void check_indices(const Tensor& ids, int64_t limit, bool has_ignored, int64_t ignored,
                   const char* op, const char* what) {
  if (ids.dtype() != DType::Int64)
    throw Error(fmt::format("{}: {} must be int64, got {} of shape {}", op, what, dtype_name(ids.dtype()), ids.shape_str()));
  for (int64_t v : ids.to_indices())
    if ((v < 0 || v >= limit) && !(has_ignored && v == ignored))
      throw Error(fmt::format("{}: {} contains {}, outside [0, {})", op, what, v, limit));
}
}  // namespace

static const OpName kEmbedding = declare_op("embedding");
Tensor embedding(const Tensor& weight, const Tensor& ids) {
  require_float(weight, "embedding");
  if (weight.dim() != 2)
    throw Error(fmt::format("embedding: weight must be (V, C), got {}", weight.shape_str()));
  if (ids.device() != weight.device())
    throw Error("embedding: ids and weight are on different devices");
  const int64_t vocab = weight.size(0), dim = weight.size(1);
  check_indices(ids, vocab, false, 0, "embedding", "ids");
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  Tensor idc = ids.contiguous(), w = weight.detach().contiguous();
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  be(weight).embedding_forward(weight.dtype(), w.raw_data(), static_cast<const int64_t*>(idc.raw_data()),
                               out.raw_data(), ids.numel(), dim);
  // dW[ids[r]] += g[r]: a scatter-add over the looked-up rows
  return record(kEmbedding, out, {weight, ids}, [idc, vocab, dim](const Tensor& g) -> Grads {
    Tensor gc = g.contiguous();
    Tensor dw = Tensor::zeros({vocab, dim}, g.dtype(), g.device());
    be(g).embedding_backward(g.dtype(), gc.raw_data(), static_cast<const int64_t*>(idc.raw_data()),
                             dw.raw_data(), idc.numel(), dim);
    return {dw, Tensor()};
  });
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
    be(logits).cross_entropy_forward(logits.dtype(), lc.raw_data(), static_cast<const int64_t*>(tc.raw_data()),
                                     losses.raw_data(), lse.raw_data(), rows, vocab, ignore_index);
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
                    be(lc).cross_entropy_backward(lc.dtype(), lc.raw_data(), static_cast<const int64_t*>(tc.raw_data()),
                                                  lse.raw_data(), d.raw_data(), rows, vocab, ignore_index, scale);
                  return {mul(d, g), Tensor()};
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

}  // namespace runway
