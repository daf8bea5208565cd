// The CUDA backend's unary and binary (broadcasting) elementwise ops: the kernels behind add ... pow,
// neg ... gelu and dropout (engine/ops/elementwise.cpp).
// Ops served: add, sub, mul, div, pow, neg, add_scalar, mul_scalar, pow_scalar, exp, log, sqrt, tanh,
// sigmoid, relu, gelu, dropout.
// The CPU kernels and the ops: engine/ops/elementwise.cpp. Map: docs/architecture.md.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"

namespace runway {
namespace cuda_kernels {

template <typename T>
__device__ inline T unary_value(UnaryOp op, T x, T p) {
  const T kGeluC = static_cast<T>(0.7978845608028654);  // sqrt(2 / pi)
  const T kGeluA = static_cast<T>(0.044715);
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return dev_exp(x);
    case UnaryOp::Log: return dev_log(x);
    case UnaryOp::Sqrt: return dev_sqrt(x);
    case UnaryOp::Tanh: return dev_tanh(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + dev_exp(-x));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Gelu: {
      const T t = dev_tanh(kGeluC * (x + kGeluA * x * x * x));
      return T(0.5) * x * (T(1) + t);
    }
    case UnaryOp::ReluGrad: return x > T(0) ? T(1) : T(0);
    case UnaryOp::GeluGrad: {
      // d/dx [0.5 x (1 + tanh(u))], u = c (x + a x^3):
      //   0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) c (1 + 3 a x^2)
      const T t = dev_tanh(kGeluC * (x + kGeluA * x * x * x));
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * kGeluC * (T(1) + T(3) * kGeluA * x * x);
    }
    case UnaryOp::AddScalar: return x + p;
    case UnaryOp::MulScalar: return x * p;
    case UnaryOp::PowScalar: return dev_pow(x, p);
  }
  return x;  // unreachable: every op is handled above
}

template <typename T>
__device__ inline T binary_value(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return dev_pow(a, b);
    case BinaryOp::Equal: return a == b ? T(1) : T(0);
  }
  return a;  // unreachable
}

// y: (n) = op(x: (n), param). y may alias x.
template <typename T>
__global__ void unary_kernel(UnaryOp op, const T* x, T* y, int64_t n, T param) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) y[i] = unary_value(op, x[i], param);
}

// out: (n) = op(a: (n), b: (n)), all contiguous with the same shape.
template <typename T>
__global__ void binary_contiguous_kernel(BinaryOp op, const T* a, const T* b, T* out,
                                         int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) out[i] = binary_value(op, a[i], b[i]);
}

// out: contiguous, shape L.shape; a and b read through L.stride_a / L.stride_b
// (0 on broadcast dims).
template <typename T>
__global__ void binary_broadcast_kernel(BinaryOp op, const T* a, const T* b, T* out, Layout L,
                                        int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) {
    int64_t oa = 0, ob = 0;
    layout_offsets(L, i, &oa, &ob);
    out[i] = binary_value(op, a[oa], b[ob]);
  }
}

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

void CudaBackend::unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) {
  check_nonnegative("unary", "n", n);
  dispatch_float(dt, "unary", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return;
    unary_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(
        op, static_cast<const T*>(x), static_cast<T*>(y), n, static_cast<T>(param));
    RUNWAY_CUDA_LAUNCH_CHECK("unary_kernel");
  });
}

void CudaBackend::binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a,
                         const void* b, void* out) {
  const Layout L = make_layout("binary", plan.out_shape, plan.a_strides, &plan.b_strides);
  const int64_t n = numel_of(plan.out_shape);
  const bool contiguous = is_contiguous_strides(plan.out_shape, plan.a_strides) &&
                          is_contiguous_strides(plan.out_shape, plan.b_strides);
  dispatch_float(dt, "binary", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return;
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* po = static_cast<T*>(out);
    if (contiguous) {
      binary_contiguous_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(op, pa, pb, po, n);
    } else {
      binary_broadcast_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(op, pa, pb, po, L, n);
    }
    RUNWAY_CUDA_LAUNCH_CHECK("binary_kernel");
  });
}

}  // namespace runway
