// The device code shared by the CUDA backend's files: launch constants, device helpers,
// block reductions, broadcast layouts and the layout kernels (fill, cast). Each op family's own
// kernels are in cuda/ops/<family>.cu, beside the CudaBackend methods that launch them.
//
// Conventions:
//  * elementwise kernels use one thread per element in a grid-stride loop;
//  * row kernels ("rows x cols", the last dimension) use one block of kThreads
//    threads per row (grid-stride over rows), with shared-memory tree reductions;
//  * all indices are int64; every buffer is contiguous unless a Layout says otherwise.
// Every compute kernel is templated on the element type T (float or double); each
// has a comment giving the shapes of its arguments.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_backend.h"
#include "engine/backend.h"

namespace runway {
namespace cuda_kernels {

constexpr int kThreads = 256;                  // threads per block (a power of two)
constexpr int64_t kMaxGrid = int64_t{1} << 20;  // cap on blocks for grid-stride loops
constexpr int64_t kMaxRowGrid = 65535;          // cap on blocks for row kernels
constexpr int kMaxDims = CudaBackend::kMaxDims;

// ============================================================================
// Device helpers
// ============================================================================

__device__ inline float dev_exp(float x) { return expf(x); }
__device__ inline double dev_exp(double x) { return exp(x); }
__device__ inline float dev_log(float x) { return logf(x); }
__device__ inline double dev_log(double x) { return log(x); }
__device__ inline float dev_sqrt(float x) { return sqrtf(x); }
__device__ inline double dev_sqrt(double x) { return sqrt(x); }
__device__ inline float dev_tanh(float x) { return tanhf(x); }
__device__ inline double dev_tanh(double x) { return tanh(x); }
__device__ inline float dev_pow(float x, float p) { return powf(x, p); }
__device__ inline double dev_pow(double x, double p) { return pow(x, p); }

// atomicAdd for double needs sm_60 or newer (the default build targets sm_90).
__device__ inline void dev_atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void dev_atomic_add(double* p, double v) { atomicAdd(p, v); }

template <typename T>
__device__ inline T neg_infinity() {
  return static_cast<T>(-INFINITY);
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Reduces one value per thread over the whole block (blockDim.x == kThreads) and
// returns the result to every thread. `buf` is kThreads elements of shared memory;
// it may be reused right after the call returns.
template <typename T, typename Op>
__device__ T block_reduce(T value, T* buf, Op op) {
  const int tid = static_cast<int>(threadIdx.x);
  buf[tid] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (tid < half) buf[tid] = op(buf[tid], buf[tid + half]);
    __syncthreads();
  }
  const T result = buf[0];
  __syncthreads();
  return result;
}

// First element and step of a grid-stride loop over elements.
__device__ inline int64_t grid_start() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Shape and up to two sets of strides, passed to kernels by value.
struct Layout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride_a[kMaxDims] = {};
  int64_t stride_b[kMaxDims] = {};
};

// Element offsets, under stride_a and stride_b, of the row-major linear index i.
__device__ inline void layout_offsets(const Layout& L, int64_t i, int64_t* off_a,
                                      int64_t* off_b) {
  int64_t a = 0, b = 0;
  for (int d = L.ndim - 1; d >= 0; --d) {
    const int64_t idx = i % L.shape[d];
    i /= L.shape[d];
    a += idx * L.stride_a[d];
    b += idx * L.stride_b[d];
  }
  *off_a = a;
  *off_b = b;
}

// ============================================================================
// Layout kernels
// ============================================================================

// dst: (n) = value.
template <typename T>
__global__ void fill_kernel(T* dst, int64_t n, T value) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) dst[i] = value;
}

// dst: (n) = To(src: (n)).
template <typename From, typename To>
__global__ void cast_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) dst[i] = static_cast<To>(src[i]);
}

}  // namespace cuda_kernels
}  // namespace runway
