// The table of ops: one entry per differentiable op (and per composite worth
// checking), with sample inputs and any tolerance that differs from the default.
// It drives `runway gradcheck`, the gradcheck test, the CPU-vs-CUDA parity test
// (tests/cuda/test_cuda_parity.cpp) and the primitives-only backend test
// (tests/test_backend_defaults.cpp). Each op family registers its rows beside its ops
// (`<family>_op_entries()` in engine/ops/<family>.cpp); engine/op_table.cpp collects them.
//
// Every name given to declare_op() must have an entry here, and every entry a row in
// docs/architecture.md's op -> files map; tests/test_op_table.cpp fails otherwise, so a
// new op cannot skip the check.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/gradcheck.h"
#include "engine/tensor.h"

namespace runway {

struct OpSample {
  OpSample(std::string label_, std::vector<Tensor> inputs_, std::vector<bool> wrt_ = {},
           TensorFn fn_ = {})
      : label(std::move(label_)), inputs(std::move(inputs_)), wrt(std::move(wrt_)), fn(std::move(fn_)) {}
  std::string label;            // what this sample exercises, e.g. "broadcast (3,1)x(1,4)"
  std::vector<Tensor> inputs;   // float64 (differentiated) and int64 (passed through)
  std::vector<bool> wrt;        // optional: which inputs to differentiate
  TensorFn fn;                  // optional: overrides the entry's fn (per-sample options)
  // Checked by random projections v^T J u whatever the entry says: set on the samples
  // sized to take the CPU backend's threaded paths, too large for a full Jacobian.
  bool fast = false;
};

struct OpEntry {
  std::string name;             // the op's declared name, or a composite's name
  std::string summary;          // one line for --list
  TensorFn fn;                  // builds the output from the sample inputs
  std::function<std::vector<OpSample>()> samples;
  double atol = GradcheckOptions{}.atol;
  double rtol = GradcheckOptions{}.rtol;
  std::string tolerance_reason;  // required when atol/rtol differ from the defaults
  bool fast = false;             // random-projection mode (large ops)
  bool composite = false;        // built from other ops; not a declared op itself
};

const std::vector<OpEntry>& op_table();
// The function a sample is checked with: its own fn when it has one, else the entry's.
const TensorFn& sample_fn(const OpEntry& entry, const OpSample& sample);
// The options a sample is checked with: the entry's tolerances, and random projections
// when the entry or the sample asks for them.
GradcheckOptions sample_options(const OpEntry& entry, const OpSample& sample);
const OpEntry* find_op(const std::string& name);

}  // namespace runway
