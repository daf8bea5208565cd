#include "nn/optim.h"

#include <fmt/format.h>

#include <omp.h>

#include <algorithm>
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

// The AdamW update of several parameters (each in place, in one pass over its five
// arrays), split over the OpenMP threads as one run of elements across all of them, so
// the whole update is one parallel region: a region per parameter cost a thread wake-up
// each (about 60 us on a 2-vCPU VM, docs/performance.md), more than a small parameter's
// update itself. The tensor-op path in AdamW::step makes ten passes and ten buffers.
template <typename T>
struct AdamWJob {
  T* p;
  const T* g;
  T* m;
  T* v;
  int64_t n;
  T decay;  // 1 - lr * weight_decay, or 1 for parameters without decay
};

template <typename T>
void fused_adamw(const std::vector<AdamWJob<T>>& jobs, double grad_scale, double b1, double b2,
                 double correction1, double correction2, double eps, double lr) {
  const T s = static_cast<T>(grad_scale), tb1 = static_cast<T>(b1), tb2 = static_cast<T>(b2);
  const T one_b1 = static_cast<T>(1.0 - b1), one_b2 = static_cast<T>(1.0 - b2);
  const T inv_c2 = static_cast<T>(1.0 / correction2), step = static_cast<T>(lr / correction1);
  const T teps = static_cast<T>(eps);
  int64_t total = 0;
  for (const auto& j : jobs) total += j.n;
  // Elements [lo, hi) of the jobs laid end to end.
  auto update = [&](int64_t lo, int64_t hi) {
    int64_t start = 0;
    for (const auto& j : jobs) {
      const int64_t a = std::max(lo, start) - start, b = std::min(hi, start + j.n) - start;
      start += j.n;
      for (int64_t i = a; i < b; ++i) {
        const T gi = j.g[i] * s;
        j.m[i] = tb1 * j.m[i] + one_b1 * gi;
        j.v[i] = tb2 * j.v[i] + one_b2 * (gi * gi);
        const T denom = std::sqrt(j.v[i] * inv_c2) + teps;
        j.p[i] = j.p[i] * j.decay - (j.m[i] / denom) * step;
      }
    }
  };
#pragma omp parallel if (total > 1 << 15)
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    update(total * tid / nt, total * (tid + 1) / nt);
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
  std::vector<AdamWJob<float>> jobs32;
  std::vector<AdamWJob<double>> jobs64;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i].tensor;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const double decay = params_[i].decay ? 1.0 - lr * options_.weight_decay : 1.0;
    if (fusable(p, g, m_[i], v_[i])) {
      if (p.dtype() == DType::Float32)
        jobs32.push_back({p.data<float>(), g.data<float>(), m_[i].data<float>(), v_[i].data<float>(), p.numel(),
                          static_cast<float>(decay)});
      else
        jobs64.push_back({p.data<double>(), g.data<double>(), m_[i].data<double>(), v_[i].data<double>(),
                          p.numel(), decay});
      continue;
    }
    if (grad_scale != 1.0) g = mul_scalar(g, grad_scale);
    m_[i] = add(mul_scalar(m_[i], b1), mul_scalar(g, 1.0 - b1));
    v_[i] = add(mul_scalar(v_[i], b2), mul_scalar(mul(g, g), 1.0 - b2));
    const Tensor denom = add_scalar(sqrt(mul_scalar(v_[i], 1.0 / correction2)), options_.eps);
    const Tensor update = mul_scalar(div(m_[i], denom), lr / correction1);
    assign(p, sub(decay == 1.0 ? p.detach() : mul_scalar(p.detach(), decay), update));
  }
  if (!jobs32.empty()) fused_adamw(jobs32, grad_scale, b1, b2, correction1, correction2, options_.eps, lr);
  if (!jobs64.empty()) fused_adamw(jobs64, grad_scale, b1, b2, correction1, correction2, options_.eps, lr);
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
