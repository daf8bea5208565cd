// The CUDA backend's host side: memory, dispatch and kernel launches. The kernels
// are in cuda/cuda_kernels.cuh. See cuda/cuda_backend.h.

#include "cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/cuda_allocator.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_kernels.cuh"

namespace runway {
namespace {

using namespace cuda_kernels;  // the kernels and the launch constants

// ============================================================================
// Host-side helpers
// ============================================================================

unsigned elementwise_grid(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxGrid));
}

unsigned row_grid(int64_t rows) { return static_cast<unsigned>(std::min(rows, kMaxRowGrid)); }

// Calls f(T{}) with T = float or double for a floating dtype; throws otherwise.
template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
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
void dispatch_any(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Int64: f(int64_t{}); return;
  }
  throw Error("cuda: unknown dtype");
}

void check_nonnegative(const char* op, const char* what, int64_t v) {
  if (v < 0) {
    throw Error(std::string("cuda ") + op + ": " + what + " must be >= 0, got " +
                std::to_string(v));
  }
}

int to_cublas_int(const char* what, int64_t v) {
  if (v < 0 || v > INT_MAX) {
    throw Error(std::string("cuda gemm: ") + what + " = " + std::to_string(v) +
                " is out of the range cuBLAS accepts (0..INT_MAX)");
  }
  return static_cast<int>(v);
}

std::string shape_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Builds a Layout; throws naming `op` for more than kMaxDims dims or mismatched ranks.
Layout make_layout(const char* op, const Shape& shape, const Shape& stride_a,
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

bool is_contiguous_strides(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

}  // namespace

// ============================================================================
// CudaBackend: setup and memory
// ============================================================================

CudaBackend::CudaBackend() : allocator_(new cuda_detail::CachingAllocator()) {
  RUNWAY_CUDA_CHECK(cudaGetDevice(&device_index_));
  cudaDeviceProp prop{};
  RUNWAY_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index_));
  device_description_ = std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
                        std::to_string(prop.minor) + ")";
  RUNWAY_CUDA_CHECK(cudaStreamCreate(&stream_));
  try {
    RUNWAY_CUBLAS_CHECK(cublasCreate(&cublas_));
    RUNWAY_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    RUNWAY_CUBLAS_CHECK(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
    // Plain FP32/FP64 arithmetic (no TF32 tensor-op shortcuts).
    RUNWAY_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  } catch (...) {
    if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
    (void)cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  // Best effort, errors ignored: a destructor must not throw.
  (void)cudaStreamSynchronize(stream_);
  allocator_.reset();
  if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

void* CudaBackend::allocate(size_t nbytes) { return allocator_->allocate(nbytes); }

void CudaBackend::deallocate(void* ptr) { allocator_->deallocate(ptr); }

size_t CudaBackend::cached_bytes() const { return allocator_->cached_bytes(); }
size_t CudaBackend::live_bytes() const { return allocator_->live_bytes(); }

void CudaBackend::empty_cache() {
  synchronize();
  allocator_->empty_cache();
}

void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t nbytes) {
  if (nbytes == 0) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice, stream_));
  // The host buffer is pageable and the caller may reuse it as soon as we return.
  RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, nbytes, cudaMemcpyDeviceToHost, stream_));
  RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_within(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0 || dst == src) return;
  RUNWAY_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() { RUNWAY_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

// ============================================================================
// Layout
// ============================================================================

void CudaBackend::fill(DType dt, void* dst, int64_t n, double value) {
  check_nonnegative("fill", "n", n);
  if (n == 0) return;
  dispatch_any(dt, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(static_cast<T*>(dst), n,
                                                                  static_cast<T>(value));
    RUNWAY_CUDA_LAUNCH_CHECK("fill_kernel");
  });
}

void CudaBackend::strided_copy(DType dt, const StridedView& src, void* dst) {
  const Layout L = make_layout("strided_copy", src.shape, src.strides, nullptr);
  const int64_t n = numel_of(src.shape);
  if (n == 0) return;
  const unsigned grid = elementwise_grid(n);
  if (dtype_size(dt) == 4) {
    const uint32_t* base = static_cast<const uint32_t*>(src.base) + src.offset;
    strided_copy_kernel<uint32_t><<<grid, kThreads, 0, stream_>>>(
        base, static_cast<uint32_t*>(dst), L, n);
  } else {
    const uint64_t* base = static_cast<const uint64_t*>(src.base) + src.offset;
    strided_copy_kernel<uint64_t><<<grid, kThreads, 0, stream_>>>(
        base, static_cast<uint64_t*>(dst), L, n);
  }
  RUNWAY_CUDA_LAUNCH_CHECK("strided_copy_kernel");
}

void CudaBackend::cast(DType from, const void* src, DType to, void* dst, int64_t n) {
  check_nonnegative("cast", "n", n);
  if (n == 0) return;
  if (from == to) {
    copy_within(dst, src, static_cast<size_t>(n) * dtype_size(from));
    return;
  }
  dispatch_any(from, [&](auto from_tag) {
    using From = decltype(from_tag);
    dispatch_any(to, [&](auto to_tag) {
      using To = decltype(to_tag);
      cast_kernel<From, To><<<elementwise_grid(n), kThreads, 0, stream_>>>(
          static_cast<const From*>(src), static_cast<To*>(dst), n);
      RUNWAY_CUDA_LAUNCH_CHECK("cast_kernel");
    });
  });
}

// ============================================================================
// Elementwise
// ============================================================================

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

// ============================================================================
// GEMM
// ============================================================================
//
// GemmArgs is row-major: C (m x n, row stride ldc) = alpha op(A) op(B) + beta C.
// cuBLAS is column-major. A row-major matrix with leading dimension ld, read as
// column-major with the same ld, is its transpose. So the row-major C buffer *is* the
// column-major C^T (n x m, ld ldc), and we ask cuBLAS for
//     C^T = alpha op(B)^T op(A)^T + beta C^T,
// i.e. swap the operands (B first, A second) and swap m and n:
//   * op(B)^T: if !trans_b, B is stored k x n row-major = column-major B^T (n x k),
//     which is already op(B)^T -> CUBLAS_OP_N; if trans_b, B is stored n x k
//     row-major = column-major B^T (k x n) and op(B)^T = B -> CUBLAS_OP_T.
//   * op(A)^T likewise: CUBLAS_OP_N if !trans_a, CUBLAS_OP_T if trans_a.
//   * cuBLAS dims (m', n', k') = (n, m, k); leading dims stay ldb, lda, ldc.
// Batch strides carry over unchanged (0 = the same matrix for every batch item).

void CudaBackend::gemm(DType dt, const GemmArgs& g, const void* a, const void* b, void* c) {
  check_nonnegative("gemm", "m", g.m);
  check_nonnegative("gemm", "n", g.n);
  check_nonnegative("gemm", "k", g.k);
  check_nonnegative("gemm", "batch", g.batch);
  if (g.row_init) {  // C = broadcast row, then C += alpha op(A) op(B)
    check_row_init(g);
    if (g.m > 0 && g.n > 0 && g.batch > 0)
      strided_copy(dt, StridedView{g.row_init, {g.batch * g.m, g.n}, {0, 1}, 0}, c);
    GemmArgs rest = g;
    rest.row_init = nullptr;
    rest.beta = 1.0;
    gemm(dt, rest, a, b, c);
    return;
  }
  dispatch_float(dt, "gemm", [&](auto tag) {
    using T = decltype(tag);
    if (g.m == 0 || g.n == 0 || g.batch == 0) return;
    if (g.k == 0) {  // op(A) op(B) is all zeros: C = beta C
      const int64_t total = g.batch * g.m * g.n;
      scale_matrices_kernel<T><<<elementwise_grid(total), kThreads, 0, stream_>>>(
          static_cast<T*>(c), g.batch, g.m, g.n, g.ldc, g.stride_c, static_cast<T>(g.beta));
      RUNWAY_CUDA_LAUNCH_CHECK("scale_matrices_kernel");
      return;
    }
    const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int m = to_cublas_int("m", g.m);
    const int n = to_cublas_int("n", g.n);
    const int k = to_cublas_int("k", g.k);
    const int lda = to_cublas_int("lda", g.lda);
    const int ldb = to_cublas_int("ldb", g.ldb);
    const int ldc = to_cublas_int("ldc", g.ldc);
    const int batch = to_cublas_int("batch", g.batch);
    const T alpha = static_cast<T>(g.alpha);
    const T beta = static_cast<T>(g.beta);
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* pc = static_cast<T*>(c);
    if constexpr (std::is_same<T, float>::value) {
      RUNWAY_CUBLAS_CHECK(cublasSgemmStridedBatched(
          cublas_, op_b, op_a, n, m, k, &alpha, pb, ldb, g.stride_b, pa, lda, g.stride_a, &beta,
          pc, ldc, g.stride_c, batch));
    } else {
      RUNWAY_CUBLAS_CHECK(cublasDgemmStridedBatched(
          cublas_, op_b, op_a, n, m, k, &alpha, pb, ldb, g.stride_b, pa, lda, g.stride_a, &beta,
          pc, ldc, g.stride_c, batch));
    }
  });
}

// ============================================================================
// Row kernels
// ============================================================================

void CudaBackend::sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  check_nonnegative("sum_rows", "rows", rows);
  check_nonnegative("sum_rows", "cols", cols);
  dispatch_float(dt, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    sum_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols);
    RUNWAY_CUDA_LAUNCH_CHECK("sum_rows_kernel");
  });
}

void CudaBackend::max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  check_nonnegative("max_rows", "rows", rows);
  check_nonnegative("max_rows", "cols", cols);
  dispatch_float(dt, "max_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    max_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols);
    RUNWAY_CUDA_LAUNCH_CHECK("max_rows_kernel");
  });
}

void CudaBackend::softmax_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols,
                               bool log) {
  check_nonnegative("softmax_rows", "rows", rows);
  check_nonnegative("softmax_rows", "cols", cols);
  dispatch_float(dt, "softmax_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    softmax_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols, log);
    RUNWAY_CUDA_LAUNCH_CHECK("softmax_rows_kernel");
  });
}

void CudaBackend::softmax_backward_rows(DType dt, const void* y, const void* dy, void* dx,
                                        int64_t rows, int64_t cols, bool log) {
  check_nonnegative("softmax_backward_rows", "rows", rows);
  check_nonnegative("softmax_backward_rows", "cols", cols);
  dispatch_float(dt, "softmax_backward_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    softmax_backward_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), rows, cols,
        log);
    RUNWAY_CUDA_LAUNCH_CHECK("softmax_backward_rows_kernel");
  });
}

void CudaBackend::cumsum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols,
                              bool exclusive, bool reverse) {
  check_nonnegative("cumsum_rows", "rows", rows);
  check_nonnegative("cumsum_rows", "cols", cols);
  dispatch_float(dt, "cumsum_rows", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    cumsum_rows_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, cols, exclusive, reverse);
    RUNWAY_CUDA_LAUNCH_CHECK("cumsum_rows_kernel");
  });
}

void CudaBackend::causal_mask(DType dt, const void* x, void* y, int64_t batch, int64_t t_q,
                              int64_t t_k, double value) {
  check_nonnegative("causal_mask", "batch", batch);
  check_nonnegative("causal_mask", "t_q", t_q);
  check_nonnegative("causal_mask", "t_k", t_k);
  dispatch_float(dt, "causal_mask", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = batch * t_q * t_k;
    if (n == 0) return;
    causal_mask_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), batch, t_q, t_k, static_cast<T>(value));
    RUNWAY_CUDA_LAUNCH_CHECK("causal_mask_kernel");
  });
}

// ============================================================================
// Fused layers
// ============================================================================

void CudaBackend::layernorm_forward(DType dt, const void* x, const void* weight,
                                    const void* bias, void* y, void* mean, void* rstd,
                                    int64_t rows, int64_t cols, double eps) {
  check_nonnegative("layernorm_forward", "rows", rows);
  check_nonnegative("layernorm_forward", "cols", cols);
  dispatch_float(dt, "layernorm_forward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    layernorm_forward_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
        static_cast<T*>(y), static_cast<T*>(mean), static_cast<T*>(rstd), rows, cols,
        static_cast<T>(eps));
    RUNWAY_CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
  });
}

void CudaBackend::layernorm_backward(DType dt, const void* dy, const void* x, const void* weight,
                                     const void* mean, const void* rstd, void* dx, void* dweight,
                                     void* dbias, int64_t rows, int64_t cols) {
  check_nonnegative("layernorm_backward", "rows", rows);
  check_nonnegative("layernorm_backward", "cols", cols);
  dispatch_float(dt, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    const T* pdy = static_cast<const T*>(dy);
    const T* px = static_cast<const T*>(x);
    const T* pmean = static_cast<const T*>(mean);
    const T* prstd = static_cast<const T*>(rstd);
    if (dx != nullptr) {
      layernorm_backward_dx_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
          pdy, px, static_cast<const T*>(weight), pmean, prstd, static_cast<T*>(dx), rows, cols);
      RUNWAY_CUDA_LAUNCH_CHECK("layernorm_backward_dx_kernel");
    }
    if (dweight != nullptr || dbias != nullptr) {
      const unsigned grid = static_cast<unsigned>(
          std::min<int64_t>((cols + kColWidth - 1) / kColWidth, kMaxRowGrid));
      const dim3 block(kColWidth, kColRows);
      layernorm_backward_params_kernel<T><<<grid, block, 0, stream_>>>(
          pdy, px, pmean, prstd, static_cast<T*>(dweight), static_cast<T*>(dbias), rows, cols);
      RUNWAY_CUDA_LAUNCH_CHECK("layernorm_backward_params_kernel");
    }
  });
}

void CudaBackend::embedding_forward(DType dt, const void* weight, const int64_t* ids, void* out,
                                    int64_t n, int64_t dim) {
  check_nonnegative("embedding_forward", "n", n);
  check_nonnegative("embedding_forward", "dim", dim);
  dispatch_float(dt, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0 || dim == 0) return;
    embedding_forward_kernel<T><<<elementwise_grid(n * dim), kThreads, 0, stream_>>>(
        static_cast<const T*>(weight), ids, static_cast<T*>(out), n, dim);
    RUNWAY_CUDA_LAUNCH_CHECK("embedding_forward_kernel");
  });
}

void CudaBackend::embedding_backward(DType dt, const void* dout, const int64_t* ids,
                                     void* dweight, int64_t n, int64_t dim) {
  check_nonnegative("embedding_backward", "n", n);
  check_nonnegative("embedding_backward", "dim", dim);
  dispatch_float(dt, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    if (n == 0 || dim == 0) return;
    embedding_backward_kernel<T><<<elementwise_grid(n * dim), kThreads, 0, stream_>>>(
        static_cast<const T*>(dout), ids, static_cast<T*>(dweight), n, dim);
    RUNWAY_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
  });
}

void CudaBackend::cross_entropy_forward(DType dt, const void* logits, const int64_t* targets,
                                        void* loss, void* lse, int64_t rows, int64_t cols,
                                        int64_t ignore_index) {
  check_nonnegative("cross_entropy_forward", "rows", rows);
  check_nonnegative("cross_entropy_forward", "cols", cols);
  dispatch_float(dt, "cross_entropy_forward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0) return;
    cross_entropy_forward_kernel<T><<<row_grid(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(logits), targets, static_cast<T*>(loss), static_cast<T*>(lse),
        rows, cols, ignore_index);
    RUNWAY_CUDA_LAUNCH_CHECK("cross_entropy_forward_kernel");
  });
}

void CudaBackend::cross_entropy_backward(DType dt, const void* logits, const int64_t* targets,
                                         const void* lse, void* dlogits, int64_t rows,
                                         int64_t cols, int64_t ignore_index, double scale) {
  check_nonnegative("cross_entropy_backward", "rows", rows);
  check_nonnegative("cross_entropy_backward", "cols", cols);
  dispatch_float(dt, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows == 0 || cols == 0) return;
    cross_entropy_backward_kernel<T><<<elementwise_grid(rows * cols), kThreads, 0, stream_>>>(
        static_cast<const T*>(logits), targets, static_cast<const T*>(lse),
        static_cast<T*>(dlogits), rows, cols, ignore_index, static_cast<T>(scale));
    RUNWAY_CUDA_LAUNCH_CHECK("cross_entropy_backward_kernel");
  });
}

// ============================================================================
// Attention and RoPE
// ============================================================================
//
// Forward (per (b, h), as batched cuBLAS calls over B*H):
//   S_h = scale * Q_h K_h^T                       gemm into the attn buffer
//   rewired: P = causal softmax of S_r (+ ALiBi)  -> p;  R from P -> r
//            absorption: column running sums;  two_hop: R = L(P) L(P) (gemm)
//   A'_h = causal softmax of S_h (+ ALiBi) - beta R, in place in attn
//   Y_h  = A'_h V_h                                gemm
// Backward:
//   dV = A'^T dY;  dA' = dY V^T;  dS' = A' * (dA' - rowsum(dA' A'))   (j <= i)
//   rewired, not detached, beta != 0:
//     dR = -beta sum_h dS'_h
//     absorption: dP[k,j] = sum_{i>k} dR[i,j] (j < k);  two_hop: dP = L(dR L(P)^T + L(P)^T dR)
//     dS_r += P * (dP - rowsum(dP P))
//   dQ = scale * dS K;  dK = scale * dS^T Q
//
// Memory: this materialises the (B, H, T, T) logits/attention in `attn` (saved for the
// backward, which also takes a (B, H, T, T) scratch for dS), i.e. O(B H T^2) floats
// each: 2 GiB at B=8, H=16, T=2048 in float32. That is the simple, exact reference for
// the lengths this project trains at (T <= 1024). Where a flash-style kernel would
// change it:
//   * standard heads: one kernel per (b, h, query tile) streams K/V tiles through shared
//     memory with an online softmax (running max and sum per row); nothing (T, T) is
//     stored, only the row log-sum-exp (B, H, T); the backward recomputes A' tile by
//     tile from q, k and the lse. The Backend interface would then save lse instead of
//     `attn` (engine/backend.h attention_forward/backward, engine/attention.cpp).
//   * rewired: R couples rows (absorption is a column prefix sum of P over earlier rows;
//     two_hop is L(P) L(P)), so P and R (B, T, T) stay materialised, which is 1/H of the
//     current memory: a first pass computes the runway head's P and R as now, then the
//     flash kernel adds -beta R[i, j] to each logit tile of every head. In the backward,
//     dR = -beta sum_h dS'_h is a (B, T, T) accumulation across heads (per-tile
//     partial sums, or atomics), after which the runway-head path below is unchanged.
//   * decoding (nn/decode.cpp) is unaffected: it already works one row at a time.

namespace {

void check_attention_args(const char* op, const AttentionArgs& a) {
  check_nonnegative(op, "batch", a.batch);
  check_nonnegative(op, "heads", a.heads);
  check_nonnegative(op, "seq", a.seq);
  check_nonnegative(op, "head_dim", a.head_dim);
  if (!a.alibi_slopes.empty() && static_cast<int64_t>(a.alibi_slopes.size()) != a.heads) {
    throw Error(std::string("cuda ") + op + ": " + std::to_string(a.alibi_slopes.size()) +
                " ALiBi slopes for " + std::to_string(a.heads) + " heads");
  }
  if (a.rewired && (a.runway_head < 0 || a.runway_head >= a.heads)) {
    throw Error(std::string("cuda ") + op + ": runway_head " + std::to_string(a.runway_head) +
                " is out of range for " + std::to_string(a.heads) + " heads");
  }
}

// Row-major batched C = alpha op(A) op(B) + beta C with contiguous row strides.
GemmArgs batched_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                      int64_t batch, double alpha, double beta) {
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

}  // namespace

template <typename T>
void CudaBackend::attention_forward_impl(const AttentionArgs& a, const T* q, const T* k,
                                         const T* v, T* y, T* attn, T* p, T* r) {
  const DType dt = dtype_of<T>::value;
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t tt = N * N;
  if (B == 0 || H == 0 || N == 0) return;

  // Buffers the caller did not ask for.
  std::unique_ptr<ScratchBuffer> attn_tmp, p_tmp, r_tmp, lp_tmp, slopes_tmp;
  if (attn == nullptr) {
    attn_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * H * tt));
    attn = attn_tmp->as<T>();
  }
  if (a.rewired && p == nullptr) {
    p_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
    p = p_tmp->as<T>();
  }
  if (a.rewired && r == nullptr) {
    r_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
    r = r_tmp->as<T>();
  }
  const double* slopes = nullptr;
  if (!a.alibi_slopes.empty()) {
    slopes_tmp.reset(new ScratchBuffer(*allocator_, sizeof(double) * H));
    copy_from_host(slopes_tmp->as<void>(), a.alibi_slopes.data(), sizeof(double) * H);
    slopes = slopes_tmp->as<double>();
  }

  // S_h = scale * Q_h K_h^T, into attn.
  gemm(dt, batched_gemm(false, true, N, N, D, B * H, a.scale, 0.0), q, k, attn);

  if (a.rewired) {
    // P = causal softmax of the runway head's un-rewired logits.
    causal_softmax_kernel<T><<<row_grid(B * N), kThreads, 0, stream_>>>(
        attn, p, B, H, 1, a.runway_head, N, slopes, nullptr, T(0));
    RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_kernel (runway head)");
    if (a.two_hop) {
      lp_tmp.reset(new ScratchBuffer(*allocator_, sizeof(T) * B * tt));
      T* lp = lp_tmp->as<T>();
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(p, lp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
      gemm(dt, batched_gemm(false, false, N, N, N, B, 1.0, 0.0), lp, lp, r);
    } else {
      absorption_summary_kernel<T><<<elementwise_grid(B * N), kThreads, 0, stream_>>>(p, r, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("absorption_summary_kernel");
    }
  }

  // A'_h = causal softmax of S_h - beta R (R only when rewired), in place.
  causal_softmax_kernel<T><<<row_grid(B * H * N), kThreads, 0, stream_>>>(
      attn, attn, B, H, H, 0, N, slopes, a.rewired ? r : nullptr,
      static_cast<T>(a.rewired ? a.beta : 0.0));
  RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_kernel");

  // Y_h = A'_h V_h.
  gemm(dt, batched_gemm(false, false, N, D, N, B * H, 1.0, 0.0), attn, v, y);
}

template <typename T>
void CudaBackend::attention_backward_impl(const AttentionArgs& a, const T* q, const T* k,
                                          const T* v, const T* attn, const T* p, const T* dy,
                                          T* dq, T* dk, T* dv) {
  const DType dt = dtype_of<T>::value;
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t tt = N * N;
  if (B == 0 || H == 0 || N == 0 || D == 0) return;

  ScratchBuffer ds_buf(*allocator_, sizeof(T) * B * H * tt);  // dA', then dS', then dS
  T* ds = ds_buf.as<T>();

  // dV_h = A'_h^T dY_h;  dA'_h = dY_h V_h^T;  dS'_h = causal softmax backward (in place).
  gemm(dt, batched_gemm(true, false, N, D, N, B * H, 1.0, 0.0), attn, dy, dv);
  gemm(dt, batched_gemm(false, true, N, N, D, B * H, 1.0, 0.0), dy, v, ds);
  causal_softmax_backward_kernel<T><<<row_grid(B * H * N), kThreads, 0, stream_>>>(
      attn, ds, ds, B * H * N, N, tt, false);
  RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_backward_kernel");

  // Through R into the runway head.
  if (a.rewired && !a.detach && a.beta != 0.0) {
    if (p == nullptr) throw Error("cuda attention_backward: rewired backward needs the saved p");
    ScratchBuffer dr_buf(*allocator_, sizeof(T) * B * tt);
    ScratchBuffer dp_buf(*allocator_, sizeof(T) * B * tt);
    T* dr = dr_buf.as<T>();
    T* dp = dp_buf.as<T>();
    runway_dr_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(
        ds, dr, B, H, N, static_cast<T>(-a.beta));
    RUNWAY_CUDA_LAUNCH_CHECK("runway_dr_kernel");
    if (a.two_hop) {
      // dP = L(dR L(P)^T + L(P)^T dR)
      ScratchBuffer lp_buf(*allocator_, sizeof(T) * B * tt);
      T* lp = lp_buf.as<T>();
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(p, lp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
      gemm(dt, batched_gemm(false, true, N, N, N, B, 1.0, 0.0), dr, lp, dp);
      gemm(dt, batched_gemm(true, false, N, N, N, B, 1.0, 1.0), lp, dr, dp);
      strictly_lower_kernel<T><<<elementwise_grid(B * tt), kThreads, 0, stream_>>>(dp, dp, B, N);
      RUNWAY_CUDA_LAUNCH_CHECK("strictly_lower_kernel");
    } else {
      absorption_backward_kernel<T><<<elementwise_grid(B * N), kThreads, 0, stream_>>>(dr, dp, B,
                                                                                      N);
      RUNWAY_CUDA_LAUNCH_CHECK("absorption_backward_kernel");
    }
    // dS_r += P * (dP - rowsum(dP P)): rows (b, i) of P, written into head r of ds.
    causal_softmax_backward_kernel<T><<<row_grid(B * N), kThreads, 0, stream_>>>(
        p, dp, ds + a.runway_head * tt, B * N, N, H * tt, true);
    RUNWAY_CUDA_LAUNCH_CHECK("causal_softmax_backward_kernel (runway head)");
  }

  // dQ_h = scale * dS_h K_h;  dK_h = scale * dS_h^T Q_h.
  gemm(dt, batched_gemm(false, false, N, D, N, B * H, a.scale, 0.0), ds, k, dq);
  gemm(dt, batched_gemm(true, false, N, D, N, B * H, a.scale, 0.0), ds, q, dk);
}

void CudaBackend::attention_forward(DType dt, const AttentionArgs& args, const void* q,
                                    const void* k, const void* v, void* y, void* attn, void* p,
                                    void* r) {
  check_attention_args("attention_forward", args);
  dispatch_float(dt, "attention_forward", [&](auto tag) {
    using T = decltype(tag);
    attention_forward_impl<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                              static_cast<const T*>(v), static_cast<T*>(y), static_cast<T*>(attn),
                              static_cast<T*>(p), static_cast<T*>(r));
  });
}

void CudaBackend::attention_backward(DType dt, const AttentionArgs& args, const void* q,
                                     const void* k, const void* v, const void* attn,
                                     const void* p, const void* r, const void* dy, void* dq,
                                     void* dk, void* dv) {
  (void)r;  // R's value is not needed: both summaries are linear or bilinear in P
  check_attention_args("attention_backward", args);
  dispatch_float(dt, "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    attention_backward_impl<T>(args, static_cast<const T*>(q), static_cast<const T*>(k),
                               static_cast<const T*>(v), static_cast<const T*>(attn),
                               static_cast<const T*>(p), static_cast<const T*>(dy),
                               static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

void CudaBackend::rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim,
                       double base, int64_t position_offset, bool inverse) {
  check_nonnegative("rope", "rows", rows);
  check_nonnegative("rope", "seq", seq);
  check_nonnegative("rope", "dim", dim);
  if (dim % 2 != 0) throw Error("cuda rope: dim must be even, got " + std::to_string(dim));
  dispatch_float(dt, "rope", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = rows * seq * (dim / 2);
    if (n == 0) return;
    rope_kernel<T><<<elementwise_grid(n), kThreads, 0, stream_>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, seq, dim, base, position_offset,
        inverse ? -1.0 : 1.0);
    RUNWAY_CUDA_LAUNCH_CHECK("rope_kernel");
  });
}

}  // namespace runway
