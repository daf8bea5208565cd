// The differentiable ops. Each is defined in its family's file, engine/ops/<family>.cpp
// (the sections below), with its forward and its backward side by side, its rows in the
// gradcheck table and its CPU kernels; docs/architecture.md maps every op to its files.
// Shapes follow NumPy broadcasting where noted. The attention ops and RoPE live in
// engine/ops/attention.h, the same way.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "engine/tensor.h"

namespace runway {

class Generator;

// ---- elementwise, broadcasting (engine/ops/elementwise.cpp) ----------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);  // a > 0 where b's gradient is needed

// ---- elementwise, unary (engine/ops/elementwise.cpp) ---------------------------------
Tensor neg(const Tensor& x);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh approximation, as GPT-2

// ---- linear algebra (engine/ops/linear.cpp) ----------------------------------------
// (..., M, K) @ (..., K, N) -> (..., M, N); batch dims broadcast. Both inputs >= 2-D.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., K) @ weight (K, N) + bias (N,) -> (..., N): a linear layer in one op (bias may
// be an undefined Tensor: none). Same values as add(matmul(x, weight), bias), faster.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- shape (views) (engine/ops/shape.cpp) ------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor copy(const Tensor& x);        // always a new contiguous buffer
Tensor contiguous(const Tensor& x);  // x itself when already contiguous, else copy(x)
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);

// ---- reductions (engine/ops/reduce.cpp; cumsum too) -----------------------------------
// Empty `dims` reduces over all dimensions.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// The gradient of max is shared equally among tied maxima.
Tensor max(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);

// ---- over a dim: softmax, log_softmax, causal_mask (engine/ops/softmax.cpp), layernorm
// (engine/ops/layernorm.cpp), rmsnorm (engine/ops/rmsnorm.cpp), cumsum (engine/ops/reduce.cpp)
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
// Over the last two dims (T_q, T_k): entries with j > i + (T_k - T_q) become `value`.
Tensor causal_mask(const Tensor& x, double value = -std::numeric_limits<double>::infinity());
// Over the last dim; weight and bias have shape (C,).
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// Over the last dim: x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps); weight has shape (C,).
Tensor rmsnorm(const Tensor& x, const Tensor& weight, double eps = 1e-5);
// Inclusive or exclusive, forward or reverse, cumulative sum along `dim`.
Tensor cumsum(const Tensor& x, int64_t dim, bool exclusive = false, bool reverse = false);

// ---- lookup (engine/ops/embedding.cpp), loss (engine/ops/softmax.cpp), dropout
// (engine/ops/elementwise.cpp) ------------------------------------------------------------
// weight (V, C), ids int64 of any shape -> (*ids.shape, C).
Tensor embedding(const Tensor& weight, const Tensor& ids);
// logits (..., V), targets int64 (...) -> scalar mean loss over targets != ignore_index.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// Zeroes each element with probability p and scales the rest by 1/(1-p); the mask
// comes from `gen`. With training false or p == 0 it returns x.
Tensor dropout(const Tensor& x, double p, Generator& gen, bool training = true);

}  // namespace runway
