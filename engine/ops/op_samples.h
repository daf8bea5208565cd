// Internal to the gradcheck table: the sample helpers that every op family's rows use
// (engine/ops/<family>.cpp defines `<family>_op_entries()`, engine/op_table.cpp
// concatenates them), and the list of those family functions.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/op_table.h"
#include "engine/random.h"
#include "engine/tensor.h"

namespace runway {

// Each op family's rows of the table, in engine/ops/<family>.cpp.
std::vector<OpEntry> elementwise_op_entries();
std::vector<OpEntry> linear_op_entries();
std::vector<OpEntry> shape_op_entries();
std::vector<OpEntry> reduce_op_entries();
std::vector<OpEntry> softmax_op_entries();
std::vector<OpEntry> layernorm_op_entries();
std::vector<OpEntry> rmsnorm_op_entries();
std::vector<OpEntry> embedding_op_entries();
std::vector<OpEntry> attention_op_entries();
std::vector<OpEntry> rope_op_entries();

namespace op_samples {

using Samples = std::vector<OpSample>;

// Uniform float64 values in [lo, hi), deterministic per (shape, seed).
inline Tensor rnd(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator gen(seed);
  return Tensor::uniform(shape, lo, hi, gen, DType::Float64);
}

inline std::vector<Tensor> qkv(int64_t b, int64_t h, int64_t t, int64_t d, uint64_t seed) {
  return {rnd({b, h, t, d}, seed, -1.5, 1.5), rnd({b, h, t, d}, seed + 1, -1.5, 1.5), rnd({b, h, t, d}, seed + 2)};
}

// Values with |x| in [0.1, 1) and random sign: keeps clear of kinks at 0 (relu).
inline Tensor away_from_zero(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = (gen.uniform01() < 0.5 ? -1.0 : 1.0) * gen.uniform(0.1, 1.0);
  return Tensor::from_vector(v, shape, DType::Float64);
}

inline Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_indices(v, shape); }

// A sample sized to take the CPU backend's threaded path (engine/ops/*.cpp,
// engine/ops/attention_cpu_fast.cpp: rows x cols > 2^14 for the row kernels, n > 2^15 for unary
// and > 2^16 for binary ops and strided copies, gemm work > 2^18), with odd row counts
// so the rows split unevenly over the threads. The small samples never get there, and a
// kernel that is only wrong when threaded passed them all. Too large for a full
// Jacobian: checked by random projections (OpSample::fast).
inline OpSample threaded(const std::string& label, std::vector<Tensor> inputs, TensorFn fn = {}) {
  OpSample s("threaded " + label, std::move(inputs), {}, std::move(fn));
  s.fast = true;
  return s;
}

inline Samples binary_samples(double lo, double hi) {
  return {
      {"same shape (3,4)", {rnd({3, 4}, 1, lo, hi), rnd({3, 4}, 2, lo, hi)}, {}},
      {"broadcast (3,1)x(1,4)", {rnd({3, 1}, 3, lo, hi), rnd({1, 4}, 4, lo, hi)}, {}},
      {"broadcast (2,3,4)x(4,)", {rnd({2, 3, 4}, 5, lo, hi), rnd({4}, 6, lo, hi)}, {}},
      {"scalar ()x(3,)", {rnd({}, 7, lo, hi), rnd({3}, 8, lo, hi)}, {}},
      {"size-1 (1,)x(1,)", {rnd({1}, 9, lo, hi), rnd({1}, 10, lo, hi)}, {}},
      threaded("(257,259)x(259,)", {rnd({257, 259}, 16, lo, hi), rnd({259}, 17, lo, hi)}),
  };
}

inline Samples unary_samples(double lo, double hi) {
  return {
      {"scalar ()", {rnd({}, 11, lo, hi)}, {}},
      {"vector (5,)", {rnd({5}, 12, lo, hi)}, {}},
      {"3-D (2,3,4)", {rnd({2, 3, 4}, 13, lo, hi)}, {}},
      threaded("(181,183)", {rnd({181, 183}, 18, lo, hi)}),
  };
}

inline Samples away_samples() {
  return {
      {"vector (7,)", {away_from_zero({7}, 14)}, {}},
      {"3-D (2,3,4)", {away_from_zero({2, 3, 4}, 15)}, {}},
      threaded("(181,183)", {away_from_zero({181, 183}, 19)}),
  };
}

inline TensorFn unary_fn(Tensor (*op)(const Tensor&)) {
  return [op](const std::vector<Tensor>& x) { return op(x[0]); };
}
inline TensorFn binary_fn(Tensor (*op)(const Tensor&, const Tensor&)) {
  return [op](const std::vector<Tensor>& x) { return op(x[0], x[1]); };
}

// One row of the table with the default tolerances.
inline OpEntry op_entry(std::string name, std::string summary, TensorFn fn,
                        std::function<std::vector<OpSample>()> samples, bool composite = false) {
  OpEntry e;
  e.name = std::move(name);
  e.summary = std::move(summary);
  e.fn = std::move(fn);
  e.samples = std::move(samples);
  e.composite = composite;
  return e;
}

}  // namespace op_samples
}  // namespace runway
