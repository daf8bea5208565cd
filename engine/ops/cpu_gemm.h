// One row-major product for the CPU attention kernels (engine/ops/attention_cpu_*.cpp).
// Internal to the CPU backend.
#pragma once

#include <cblas.h>

#include <cstdint>
#include <type_traits>

namespace runway::cpu {

// C = alpha op(A) op(B) + beta C, row-major, through single-threaded OpenBLAS (the backend
// keeps OpenBLAS at one thread, so it can run inside the kernels' OpenMP loops).
// OpenBLAS's AVX-512 kernels are about twice Eigen's AVX2 products (the engine is built
// for x86-64-v3) at these sizes.
template <typename T>
void tile_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
               int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  else
    cblas_dgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace runway::cpu
