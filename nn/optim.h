// AdamW (decoupled weight decay, Loshchilov & Hutter), the warmup + cosine learning
// rate schedule, and gradient clipping by global norm.
#pragma once

#include <cstdint>
#include <vector>

#include "nn/module.h"

namespace runway::nn {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied only to parameters with decay = true (matmul weights)
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, AdamWOptions options);
  // One update with learning rate lr; every gradient is multiplied by grad_scale first
  // (gradient clipping). Parameters without a gradient are left alone.
  //   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
  //   p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
  void step(double lr, double grad_scale = 1.0);
  void zero_grad();
  int64_t steps_taken() const { return t_; }

  // State for checkpoints: first and second moments per parameter, and the step.
  std::vector<NamedParameter>& params() { return params_; }
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }
  void set_steps_taken(int64_t t) { t_ = t; }

 private:
  std::vector<NamedParameter> params_;
  AdamWOptions options_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// Linear warmup from 0 to peak over `warmup` steps, then cosine decay to
// peak * min_ratio at `total` steps (and flat after).
double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio);

// sqrt(sum of squared gradient entries) over all parameters that have a gradient.
double global_grad_norm(const std::vector<NamedParameter>& params);

// The factor that brings the global norm down to max_norm (1 when it is already below,
// or when max_norm <= 0, meaning no clipping).
double clip_scale(double norm, double max_norm);

// Overwrites the values of `dst` with those of `src` (same shape and dtype), in place:
// parameters are updated this way so every handle to them sees the new values.
void assign(Tensor& dst, const Tensor& src);

}  // namespace runway::nn
