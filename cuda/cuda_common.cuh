// Host-side helpers shared by the CUDA backend's files (cuda/cuda_backend.cu and the
// op families' cuda/ops/<family>.cu): launch grids, dtype dispatch, argument checks,
// broadcast layouts, scratch buffers. Included only by those .cu files.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "cuda/cuda_allocator.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_kernels.cuh"

namespace runway {
namespace cuda_host {

using namespace cuda_kernels;  // the kernels and the launch constants

inline unsigned elementwise_grid(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxGrid));
}

inline unsigned row_grid(int64_t rows) { return static_cast<unsigned>(std::min(rows, kMaxRowGrid)); }

// Calls f(T{}) with T = float or double for a floating dtype; throws otherwise.
template <typename F>
inline void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Int64: break;
  }
  throw Error(std::string("cuda ") + op + ": dtype " + dtype_name(dt) +
              " is not supported (float32 and float64 only)");
}

// Calls f(T{}) with the C++ type of any dtype.
template <typename F>
inline void dispatch_any(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Int64: f(int64_t{}); return;
  }
  throw Error("cuda: unknown dtype");
}

inline void check_nonnegative(const char* op, const char* what, int64_t v) {
  if (v < 0) {
    throw Error(std::string("cuda ") + op + ": " + what + " must be >= 0, got " +
                std::to_string(v));
  }
}

// The sizes, ALiBi slopes and runway head of an attention call (materialised or blockwise).
inline void check_attention_args(const char* op, const AttentionArgs& a) {
  check_nonnegative(op, "batch", a.batch);
  check_nonnegative(op, "heads", a.heads);
  check_nonnegative(op, "seq", a.seq);
  check_nonnegative(op, "head_dim", a.head_dim);
  if (!a.alibi_slopes.empty() && static_cast<int64_t>(a.alibi_slopes.size()) != a.heads) {
    throw Error(std::string("cuda ") + op + ": " + std::to_string(a.alibi_slopes.size()) + " ALiBi slopes for " +
                std::to_string(a.heads) + " heads");
  }
  if (a.rewired && (a.runway_head < 0 || a.runway_head >= a.heads)) {
    throw Error(std::string("cuda ") + op + ": runway_head " + std::to_string(a.runway_head) +
                " is out of range for " + std::to_string(a.heads) + " heads");
  }
}

inline int to_cublas_int(const char* what, int64_t v) {
  if (v < 0 || v > INT_MAX) {
    throw Error(std::string("cuda gemm: ") + what + " = " + std::to_string(v) +
                " is out of the range cuBLAS accepts (0..INT_MAX)");
  }
  return static_cast<int>(v);
}

inline std::string shape_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

inline int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Builds a Layout; throws naming `op` for more than kMaxDims dims or mismatched ranks.
inline Layout make_layout(const char* op, const Shape& shape, const Shape& stride_a,
                   const Shape* stride_b) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) {
    throw Error(std::string("cuda ") + op + ": " + std::to_string(shape.size()) +
                " dims (shape " + shape_string(shape) + ") exceed the CUDA backend's limit of " +
                std::to_string(kMaxDims));
  }
  if (stride_a.size() != shape.size() || (stride_b != nullptr && stride_b->size() != shape.size())) {
    throw Error(std::string("cuda ") + op + ": strides do not match the rank of shape " +
                shape_string(shape));
  }
  Layout L;
  L.ndim = static_cast<int>(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) {
    L.shape[d] = shape[d];
    L.stride_a[d] = stride_a[d];
    L.stride_b[d] = stride_b != nullptr ? (*stride_b)[d] : 0;
  }
  return L;
}

// A temporary device buffer from the backend's allocator, returned to it on scope exit
// (safe at once: later work on the one stream is ordered after the kernels using it).
class ScratchBuffer {
 public:
  ScratchBuffer(cuda_detail::CachingAllocator& allocator, size_t nbytes)
      : allocator_(allocator), ptr_(allocator.allocate(nbytes)) {}
  ~ScratchBuffer() {
    try {
      allocator_.deallocate(ptr_);
    } catch (...) {
      // cannot happen for a pointer from allocate(); a destructor must not throw
    }
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  cuda_detail::CachingAllocator& allocator_;
  void* ptr_;
};

inline bool is_contiguous_strides(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

}  // namespace cuda_host
}  // namespace runway
