#include "engine/gradcheck.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/autograd.h"
#include "engine/random.h"

namespace runway {

namespace {

struct Problem {
  const TensorFn& f;
  std::vector<Tensor> inputs;     // private float64 copies (leaves) and passthroughs
  std::vector<size_t> diff;       // indices of differentiable inputs
};

// Fresh leaves for one evaluation, so each graph is independent.
std::vector<Tensor> fresh_leaves(const Problem& p, bool requires_grad) {
  std::vector<Tensor> xs;
  for (size_t i = 0; i < p.inputs.size(); ++i) {
    Tensor x = p.inputs[i].detach();
    const bool d = std::find(p.diff.begin(), p.diff.end(), i) != p.diff.end();
    if (d && requires_grad) x.set_requires_grad(true);
    xs.push_back(x);
  }
  return xs;
}

std::vector<double> evaluate(const Problem& p) {
  NoGradGuard no_grad;
  return p.f(fresh_leaves(p, false)).to_vector();
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Gradients of <upstream, f(x)> for each differentiable input (zeros where none flowed).
std::vector<std::vector<double>> analytic_vjp(const Problem& p, const Tensor& upstream,
                                             std::vector<std::string>* problems) {
  std::vector<Tensor> xs = fresh_leaves(p, true);
  Tensor y = p.f(xs);
  std::vector<std::vector<double>> grads;
  if (!y.requires_grad()) {
    if (problems) problems->push_back("output does not require grad: no input reached it through the tape");
    for (size_t i : p.diff) grads.emplace_back(p.inputs[i].numel(), 0.0);
    return grads;
  }
  y.backward(upstream);
  for (size_t i : p.diff) {
    Tensor g = xs[i].grad();
    if (!g.defined()) {
      grads.emplace_back(xs[i].numel(), 0.0);
      continue;
    }
    if (problems && (g.shape() != xs[i].shape() || g.dtype() != xs[i].dtype()))
      problems->push_back(fmt::format("input {}: gradient {} {} does not match input {} {}", i,
                                      g.shape_str(), dtype_name(g.dtype()), xs[i].shape_str(),
                                      dtype_name(xs[i].dtype())));
    grads.push_back(g.to_vector());
  }
  return grads;
}

void compare(InputCheck& check, double analytic, double numeric, const GradcheckOptions& o) {
  const double err = std::fabs(analytic - numeric);
  check.max_abs_err = std::max(check.max_abs_err, err);
  if (numeric != 0) check.max_rel_err = std::max(check.max_rel_err, err / std::fabs(numeric));
  const double allowed = o.atol + o.rtol * std::fabs(numeric);
  const double excess = err - allowed;
  check.worst_excess = std::max(check.worst_excess, excess);
  check.tolerance_used = std::max(check.tolerance_used, err / allowed);
  if (!(excess <= 0)) check.passed = false;  // NaN fails too
}

void structural_checks(const Problem& p, const Tensor& y0, GradcheckResult& result,
                       Generator& gen) {
  // A zero upstream gradient must give exactly zero gradients.
  const auto zero = analytic_vjp(p, Tensor::zeros(y0.shape(), y0.dtype()), &result.failures);
  for (size_t k = 0; k < zero.size(); ++k)
    for (double v : zero[k])
      if (v != 0.0) {
        result.failures.push_back(fmt::format("input {}: zero upstream gradient gave a nonzero gradient ({})", p.diff[k], v));
        break;
      }
  // Backward twice over the same graph must give identical gradients.
  Tensor u = Tensor::normal(y0.shape(), 0.0, 1.0, gen, DType::Float64);
  std::vector<Tensor> xs = fresh_leaves(p, true);
  Tensor y = p.f(xs);
  if (!y.requires_grad()) return;
  y.backward(u);
  std::vector<std::vector<double>> first;
  for (size_t i : p.diff) {
    first.push_back(xs[i].grad().defined() ? xs[i].grad().to_vector() : std::vector<double>());
    xs[i].zero_grad();
  }
  y.backward(u);
  for (size_t k = 0; k < p.diff.size(); ++k) {
    Tensor g = xs[p.diff[k]].grad();
    std::vector<double> second = g.defined() ? g.to_vector() : std::vector<double>();
    if (second != first[k])
      result.failures.push_back(fmt::format("input {}: a second backward over the same graph gave a different gradient", p.diff[k]));
  }
}

// The problem of checking f at `inputs`: private float64 copies of the inputs, and
// which of them are differentiated (float64 ones unless `wrt` says otherwise).
Problem make_problem(const TensorFn& f, const std::vector<Tensor>& inputs, const std::vector<bool>& wrt) {
  if (!wrt.empty() && wrt.size() != inputs.size())
    throw Error(fmt::format("gradcheck: {} wrt flags for {} inputs", wrt.size(), inputs.size()));
  Problem p{f, {}, {}};
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (x.device() != Device::CPU) throw Error(fmt::format("gradcheck: input {} is not on the CPU", i));
    const bool wanted = wrt.empty() ? x.dtype() == DType::Float64 : wrt[i];
    if (wanted && x.dtype() != DType::Float64)
      throw Error(fmt::format("gradcheck: input {} is {}, differentiable inputs must be float64", i,
                              dtype_name(x.dtype())));
    p.inputs.push_back(x.detach().clone());  // private, contiguous, perturbable
    if (wanted) p.diff.push_back(i);
  }
  return p;
}

// Full mode for differentiable input k: the numeric Jacobian column by column (central
// differences of f), the analytic one row by row (backward from each one-hot upstream).
void check_full_jacobian(Problem& p, size_t k, const Tensor& y0, const GradcheckOptions& options,
                         InputCheck& check) {
  const int64_t n_out = y0.numel();
  Tensor& x = p.inputs[p.diff[k]];
  double* data = x.data<double>();
  std::vector<std::vector<double>> numeric(x.numel());
  for (int64_t j = 0; j < x.numel(); ++j) {
    const double saved = data[j];
    data[j] = saved + options.eps;
    const auto plus = evaluate(p);
    data[j] = saved - options.eps;
    const auto minus = evaluate(p);
    data[j] = saved;
    numeric[j].resize(n_out);
    for (int64_t o = 0; o < n_out; ++o) numeric[j][o] = (plus[o] - minus[o]) / (2 * options.eps);
  }
  for (int64_t o = 0; o < n_out; ++o) {
    std::vector<double> onehot(n_out, 0.0);
    onehot[o] = 1.0;
    const auto rows = analytic_vjp(p, Tensor::from_vector(onehot, y0.shape(), DType::Float64), nullptr);
    for (int64_t j = 0; j < x.numel(); ++j) compare(check, rows[k][j], numeric[j][o], options);
  }
}

// Fast mode for differentiable input k: `options.projections` random pairs (u, v), each
// comparing <grad_x <u, f(x)>, v> with <u, f(x + eps v) - f(x - eps v)> / (2 eps).
void check_random_projections(Problem& p, size_t k, const Tensor& y0, const GradcheckOptions& options,
                              Generator& gen, InputCheck& check) {
  const int64_t n_out = y0.numel();
  Tensor& x = p.inputs[p.diff[k]];
  double* data = x.data<double>();
  for (int proj = 0; proj < options.projections; ++proj) {
    Tensor u = Tensor::normal(y0.shape(), 0.0, 1.0, gen, DType::Float64);
    const auto uv = u.to_vector();
    std::vector<double> v(x.numel());
    for (double& e : v) e = gen.normal();
    const auto grads = analytic_vjp(p, u, nullptr);
    const double analytic = dot(grads[k], v);
    std::vector<double> saved(data, data + x.numel());
    for (int64_t j = 0; j < x.numel(); ++j) data[j] = saved[j] + options.eps * v[j];
    std::vector<double> difference = evaluate(p);
    for (int64_t j = 0; j < x.numel(); ++j) data[j] = saved[j] - options.eps * v[j];
    const std::vector<double> minus = evaluate(p);
    std::copy(saved.begin(), saved.end(), data);
    // Differences first, then the dot with u: <u, f+> - <u, f-> would subtract two
    // sums of n_out terms whose rounding errors (~1e-16 of the partial sums, over
    // thousands of outputs) do not cancel, divided by 2 eps: measured up to 4e-6 on
    // the threaded-size samples, against 3e-8 this way.
    for (int64_t o = 0; o < n_out; ++o) difference[o] -= minus[o];
    compare(check, analytic, dot(uv, difference) / (2 * options.eps), options);
  }
}

}  // namespace

GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options, const std::vector<bool>& wrt) {
  Problem p = make_problem(f, inputs, wrt);
  GradcheckResult result;
  Generator gen(options.seed);
  Tensor y0;
  {
    NoGradGuard no_grad;
    y0 = f(fresh_leaves(p, false));
  }
  if (y0.dtype() != DType::Float64)
    throw Error(fmt::format("gradcheck: the function returned {}, expected float64", dtype_name(y0.dtype())));

  for (size_t k = 0; k < p.diff.size(); ++k) {
    InputCheck check;
    check.input_index = p.diff[k];
    check.numel = p.inputs[p.diff[k]].numel();
    if (!options.fast)
      check_full_jacobian(p, k, y0, options, check);
    else
      check_random_projections(p, k, y0, options, gen, check);
    result.passed = result.passed && check.passed;
    result.inputs.push_back(check);
  }

  structural_checks(p, y0, result, gen);
  if (!result.failures.empty()) result.passed = false;
  return result;
}

}  // namespace runway
