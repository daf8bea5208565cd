#include "nn/optim.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace runway::nn {

AdamW::AdamW(std::vector<NamedParameter> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  for (const auto& p : params_) {
    m_.push_back(Tensor::zeros(p.tensor.shape(), p.tensor.dtype(), p.tensor.device()));
    v_.push_back(Tensor::zeros(p.tensor.shape(), p.tensor.dtype(), p.tensor.device()));
  }
}

void assign(Tensor& dst, const Tensor& src) {
  if (dst.shape() != src.shape() || dst.dtype() != src.dtype() || dst.device() != src.device())
    throw Error(fmt::format("assign: {} {} into {} {}", src.shape_str(), dtype_name(src.dtype()),
                            dst.shape_str(), dtype_name(dst.dtype())));
  if (!dst.is_contiguous()) throw Error("assign: destination must be contiguous");
  Tensor s = src.contiguous();
  backend_for(dst.device()).copy_within(dst.raw_data(), s.raw_data(), dst.numel() * dtype_size(dst.dtype()));
}

namespace {

// Contiguous CPU tensors of one float dtype, where the update can run as one loop.
bool fusable(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v) {
  for (const Tensor* t : {&p, &g, &m, &v})
    if (t->device() != Device::CPU || t->dtype() != p.dtype() || !t->is_contiguous()) return false;
  return is_floating(p.dtype()) && g.shape() == p.shape() && m.shape() == p.shape() && v.shape() == p.shape();
}

// The update of AdamW::step for one parameter, in place, in one pass over the five
// arrays (the tensor-op path below makes ten passes and ten new buffers per parameter;
// in a small model's step that was as long as the rest of the step).
template <typename T>
void fused_adamw(T* p, const T* g, T* m, T* v, int64_t n, double grad_scale, double b1, double b2,
                 double correction1, double correction2, double eps, double lr, double decay) {
  const T s = static_cast<T>(grad_scale), tb1 = static_cast<T>(b1), tb2 = static_cast<T>(b2);
  const T one_b1 = static_cast<T>(1.0 - b1), one_b2 = static_cast<T>(1.0 - b2);
  const T inv_c2 = static_cast<T>(1.0 / correction2), step = static_cast<T>(lr / correction1);
  const T teps = static_cast<T>(eps), tdecay = static_cast<T>(decay);
#pragma omp parallel for if (n > 1 << 15) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i] * s;
    m[i] = tb1 * m[i] + one_b1 * gi;
    v[i] = tb2 * v[i] + one_b2 * (gi * gi);
    const T denom = std::sqrt(v[i] * inv_c2) + teps;
    p[i] = p[i] * tdecay - (m[i] / denom) * step;
  }
}

// sum of x^2 in double, with 8 independent partial sums so the loop vectorises (a
// single accumulator is a serial chain of dependent adds).
template <typename T>
double sum_of_squares(const T* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(x[i + j]) * static_cast<double>(x[i + j]);
  for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

void AdamW::step(double lr, double grad_scale) {
  NoGradGuard no_grad;
  ++t_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1.0 - std::pow(b1, static_cast<double>(t_));
  const double correction2 = 1.0 - std::pow(b2, static_cast<double>(t_));
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i].tensor;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (fusable(p, g, m_[i], v_[i])) {
      const double decay = params_[i].decay ? 1.0 - lr * options_.weight_decay : 1.0;
      if (p.dtype() == DType::Float32)
        fused_adamw(p.data<float>(), g.data<float>(), m_[i].data<float>(), v_[i].data<float>(), p.numel(),
                    grad_scale, b1, b2, correction1, correction2, options_.eps, lr, decay);
      else
        fused_adamw(p.data<double>(), g.data<double>(), m_[i].data<double>(), v_[i].data<double>(), p.numel(),
                    grad_scale, b1, b2, correction1, correction2, options_.eps, lr, decay);
      continue;
    }
    if (grad_scale != 1.0) g = mul_scalar(g, grad_scale);
    m_[i] = add(mul_scalar(m_[i], b1), mul_scalar(g, 1.0 - b1));
    v_[i] = add(mul_scalar(v_[i], b2), mul_scalar(mul(g, g), 1.0 - b2));
    const Tensor denom = add_scalar(sqrt(mul_scalar(v_[i], 1.0 / correction2)), options_.eps);
    const Tensor update = mul_scalar(div(m_[i], denom), lr / correction1);
    const double decay = params_[i].decay ? 1.0 - lr * options_.weight_decay : 1.0;
    assign(p, sub(decay == 1.0 ? p.detach() : mul_scalar(p.detach(), decay), update));
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_) p.tensor.zero_grad();
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (step >= total) return peak * min_ratio;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(total - warmup, 1));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

double global_grad_norm(const std::vector<NamedParameter>& params) {
  NoGradGuard no_grad;
  double total = 0;
  for (const auto& p : params) {
    Tensor g = p.tensor.grad();
    if (!g.defined()) continue;
    if (g.device() == Device::CPU && g.is_contiguous() && is_floating(g.dtype())) {
      // One pass, accumulated in double, no temporaries.
      total += g.dtype() == DType::Float32 ? sum_of_squares(g.data<float>(), g.numel())
                                           : sum_of_squares(g.data<double>(), g.numel());
    } else {
      total += sum(mul(g, g)).item();
    }
  }
  return std::sqrt(total);
}

double clip_scale(double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm || !(norm > 0)) return 1.0;
  return max_norm / norm;
}

}  // namespace runway::nn
