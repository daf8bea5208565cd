// A backend may implement only the primitives of engine/backend.h (memory, layout,
// elementwise, gemm, row reductions) and still run every op: the fused kernels
// (engine/fused_kernel.h: layernorm, cross-entropy, softmax rows, causal mask, cumsum,
// embedding, ...; and attention's Backend virtuals) then run their defaults, composed from
// those primitives.
//
// Proof: the delegating backend (engine/testing/delegating_backend.h) serves
// Device::CUDA with the CPU backend's primitives only (has_fused_kernels() false); every
// sample of the gradcheck table runs forward and backward on it and on the CPU backend,
// and the outputs and every input gradient agree in float64. Forwarding every kernel (the
// CPU's fused kernel implementations, kernel_device() being the CPU), they agree bit for bit.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/op_table.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/testing/delegating_backend.h"

using namespace runway;
using runway::testing::DelegatingBackend;

namespace {

// Serves Device::CUDA with `forward` of the CPU backend (and replaces whatever served it:
// this test binary never loads the real CUDA backend).
void serve_cuda_with(DelegatingBackend::Forward forward) {
  static DelegatingBackend all(backend_for(Device::CPU), Device::CUDA, "cpu, every kernel",
                               DelegatingBackend::Forward::All);
  static DelegatingBackend primitives(backend_for(Device::CPU), Device::CUDA, "cpu primitives + defaults",
                                      DelegatingBackend::Forward::PrimitivesOnly);
  register_backend(forward == DelegatingBackend::Forward::All ? &all : &primitives);
}

struct Run {
  std::vector<double> output;
  std::vector<std::vector<double>> grads;  // per input; empty when it has none
};

// The sample's output and, from a fixed upstream gradient, every float input's gradient.
Run run_on(Device device, const OpEntry& entry, const OpSample& sample) {
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < sample.inputs.size(); ++i) {
    Tensor x = sample.inputs[i].to(device);
    const bool wrt = sample.wrt.empty() || sample.wrt[i];
    if (is_floating(x.dtype()) && wrt) x.set_requires_grad(true);
    inputs.push_back(x);
  }
  Tensor out = sample_fn(entry, sample)(inputs);
  Generator gen(1234);
  Tensor upstream = Tensor::uniform(out.shape(), -1.0, 1.0, gen, out.dtype()).to(device);
  Run run;
  run.output = out.to_vector();
  if (out.requires_grad()) out.backward(upstream);
  for (const Tensor& x : inputs) {
    const Tensor g = x.requires_grad() ? x.grad() : Tensor();
    run.grads.push_back(g.defined() ? g.to_vector() : std::vector<double>{});
  }
  return run;
}

// Largest |a - b| / (1 + |b|); infinite when the sizes differ, NaN-aware.
double worst_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (a[i] == b[i]) continue;  // equal infinities
    const double d = std::abs(a[i] - b[i]) / (1.0 + std::abs(b[i]));
    if (!(d <= worst)) worst = d;
  }
  return worst;
}

// Every sample of the table on the CPU and on the delegating "CUDA" backend; the
// largest difference must be <= tol (0 for bit-for-bit).
void compare_every_sample(double tol) {
  int samples = 0, held_on_cpu = 0;
  for (const OpEntry& entry : op_table()) {
    for (const OpSample& sample : entry.samples()) {
      INFO(entry.name << " / " << sample.label);
      // The detached rewired samples check against a reference whose R0 is computed once,
      // on the CPU, when the sample is built (detached_runway_check): they cannot move.
      const bool rewired_op = entry.name == "rewired_attention" || entry.name == "rewired_attention_blockwise";
      if (rewired_op && sample.label.find(" det") != std::string::npos) {
        ++held_on_cpu;
        continue;
      }
      const Run cpu = run_on(Device::CPU, entry, sample);
      const Run other = run_on(Device::CUDA, entry, sample);
      CHECK(worst_diff(other.output, cpu.output) <= tol);
      REQUIRE(other.grads.size() == cpu.grads.size());
      for (size_t i = 0; i < cpu.grads.size(); ++i) {
        INFO("gradient of input " << i);
        CHECK(worst_diff(other.grads[i], cpu.grads[i]) <= tol);
      }
      ++samples;
    }
  }
  CHECK(samples >= 300);
  CHECK(held_on_cpu <= 129 + 130);  // the detached samples of rewired_attention and of its blockwise twin
}

}  // namespace

TEST_CASE("a backend with only the primitives runs every op: the defaults match the CPU kernels (float64)") {
  serve_cuda_with(DelegatingBackend::Forward::PrimitivesOnly);
  // The defaults sum in other orders (gemm, sum_rows) than the fused CPU kernels: equal
  // to a few float64 roundings, far below any real error.
  compare_every_sample(1e-12);
}

TEST_CASE("the delegating backend forwarding every kernel agrees with the CPU bit for bit") {
  serve_cuda_with(DelegatingBackend::Forward::All);
  compare_every_sample(0.0);
}
