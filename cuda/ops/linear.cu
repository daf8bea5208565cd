// The CUDA backend's gemm through cuBLAS: the kernel behind matmul and linear (engine/ops/linear.cpp).
// Ops served: matmul, linear.
// The CPU kernels and the ops: engine/ops/linear.cpp. Map: docs/architecture.md.
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

// c: `batch` matrices (m x n, row stride ldc, batch stride stride_c) = beta * c
// (0 when beta == 0, so NaNs in c do not propagate). Used for gemm with k == 0.
template <typename T>
__global__ void scale_matrices_kernel(T* c, int64_t batch, int64_t m, int64_t n, int64_t ldc,
                                      int64_t stride_c, T beta) {
  const int64_t total = batch * m * n;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t bi = i / (m * n);
    const int64_t r = (i / n) % m;
    const int64_t col = i % n;
    T* p = c + bi * stride_c + r * ldc + col;
    *p = beta == T(0) ? T(0) : beta * *p;
  }
}

}  // namespace cuda_kernels

using namespace cuda_kernels;
using namespace cuda_host;

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

}  // namespace runway
