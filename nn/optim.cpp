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
    if (g.defined()) total += sum(mul(g, g)).item();
  }
  return std::sqrt(total);
}

double clip_scale(double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm || !(norm > 0)) return 1.0;
  return max_norm / norm;
}

}  // namespace runway::nn
