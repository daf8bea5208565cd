// Plain loop-level reference kernels, in double, one per tuned CPU kernel: the math of
// each op family's kernel with no threads, blocks or vector tricks, defined beside the
// tuned kernel in engine/ops/<family>.cpp. tests/test_threaded_kernels.cpp holds every
// tuned (threaded, vectorised) kernel equal to its reference at sizes that take its
// threaded path. (The attention references: engine/ops/attention.cpp. rmsnorm's are declared
// in that test, where they are used, so that adding a fused op needs no engine header.)
#pragma once

#include <cstdint>

#include "engine/backend.h"

namespace runway::cpu::reference {

// ---- engine/ops/elementwise.cpp -----------------------------------------------------------
// One element of Backend::unary (GELU in its tanh form: 0.5 x (1 + tanh u)).
double unary(UnaryOp op, double x, double param);
// One element of Backend::binary.
double binary(BinaryOp op, double a, double b);

// ---- engine/ops/linear.cpp ----------------------------------------------------------------
// Backend::gemm as a triple loop: every field of GemmArgs (transposes, leading dims, batch
// strides, alpha, beta, row_init).
void gemm(const GemmArgs& args, const double* a, const double* b, double* c);

// ---- engine/ops/reduce.cpp ----------------------------------------------------------------
// y (rows) = sum of x (rows, cols) over cols.
void sum_rows(const double* x, double* y, int64_t rows, int64_t cols);

// ---- engine/ops/softmax.cpp ---------------------------------------------------------------
// Backend::softmax_rows and softmax_backward_rows over (rows, cols).
void softmax_rows(const double* x, double* y, int64_t rows, int64_t cols, bool log);
void softmax_backward_rows(const double* y, const double* dy, double* dx, int64_t rows, int64_t cols, bool log);
// Backend::cross_entropy_forward and cross_entropy_backward.
void cross_entropy_forward(const double* logits, const int64_t* targets, double* loss, double* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index);
void cross_entropy_backward(const double* logits, const int64_t* targets, const double* lse, double* dlogits,
                            int64_t rows, int64_t cols, int64_t ignore_index, double scale);

// ---- engine/ops/layernorm.cpp -------------------------------------------------------------
// Backend::layernorm_forward and layernorm_backward (which accumulates into dweight, dbias).
void layernorm_forward(const double* x, const double* weight, const double* bias, double* y, double* mean,
                       double* rstd, int64_t rows, int64_t cols, double eps);
void layernorm_backward(const double* dy, const double* x, const double* weight, const double* mean,
                        const double* rstd, double* dx, double* dweight, double* dbias, int64_t rows, int64_t cols);

}  // namespace runway::cpu::reference
