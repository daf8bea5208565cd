// Gradient checking against central finite differences (float64, CPU).
//
// gradcheck(f, inputs) compares the tape's gradients of f with numeric ones:
//   full mode (default): the whole Jacobian. Column j of the numeric Jacobian is
//     (f(x + eps e_j) - f(x - eps e_j)) / (2 eps); row o of the analytic one is the
//     backward pass from the one-hot upstream gradient e_o.
//   fast mode: random projections v^T J u, for ops too large for a full Jacobian:
//     analytic <grad_x <u, f(x)>, v> against <u, f(x + eps v) - f(x - eps v)> / (2 eps),
//     one input at a time.
// Each pair passes when |analytic - numeric| <= atol + rtol * |numeric|.
//
// Default tolerances: atol 1e-8, rtol 1e-6 (they were 1e-5 and 1e-3, which let a
// backward wrong by 0.1% pass). Central differences with eps 1e-6 in float64 err by the
// truncation eps^2 |f'''| / 6 ~ 1e-13 and by rounding ~ 1e-16 |f| / eps ~ 1e-10 |f| on
// the O(1) inputs of the op table. Measured over all 430 samples of the table (with
// InputCheck::tolerance_used): full Jacobians err by at most 9.5e-10 (exp, values up to
// e^2); random projections by at most 1.3e-6 on |numeric| ~ 1e4 (cumsum), relative 4e-8
// at most; no sample uses more than 3.1% of atol + rtol |numeric| (a 30x margin). A
// backward wrong by a relative 1e-4 fails wherever |numeric| > 1e-4
// (tests/test_gradcheck_lib.cpp). An op that needs looser says why in its op-table row
// (OpEntry::tolerance_reason).
//
// Structural checks run in both modes: a zero upstream gradient gives zero input
// gradients; backward run twice on the same graph gives identical gradients;
// gradient shapes and dtypes match the inputs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace runway {

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-8;
  double rtol = 1e-6;
  bool fast = false;
  int projections = 3;  // fast mode: random (u, v) pairs per input
  uint64_t seed = 1234;
};

struct InputCheck {
  size_t input_index = 0;
  int64_t numel = 0;
  double max_abs_err = 0;  // max |analytic - numeric|
  double max_rel_err = 0;  // max |analytic - numeric| / |numeric| over |numeric| > 0
  double worst_excess = 0;  // max of |a - n| - (atol + rtol |n|); > 0 means a failure
  double tolerance_used = 0;  // max of |a - n| / (atol + rtol |n|); > 1 means a failure
  bool passed = true;
};

struct GradcheckResult {
  bool passed = true;
  std::vector<InputCheck> inputs;          // one per differentiable input
  std::vector<std::string> failures;       // structural failures, in words
};

// `inputs` must be CPU tensors; float64 ones are differentiated unless `wrt` (one
// flag per input) says otherwise, int64 ones are passed through unchanged.
GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {},
                          const std::vector<bool>& wrt = {});

}  // namespace runway
