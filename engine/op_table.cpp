#include "engine/op_table.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/attention.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace runway {

namespace {

using Samples = std::vector<OpSample>;

// Uniform float64 values in [lo, hi), deterministic per (shape, seed).
Tensor rnd(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator gen(seed);
  return Tensor::uniform(shape, lo, hi, gen, DType::Float64);
}

std::vector<Tensor> qkv(int64_t b, int64_t h, int64_t t, int64_t d, uint64_t seed) {
  return {rnd({b, h, t, d}, seed, -1.5, 1.5), rnd({b, h, t, d}, seed + 1, -1.5, 1.5), rnd({b, h, t, d}, seed + 2)};
}

// With runway_detach the backward is, by definition, the gradient of the function in
// which R is frozen at its current value R0. The finite differences must see that
// function: the returned fn evaluates to the frozen-R reference (built from primitives
// with R0 from the unperturbed inputs) while its tape gradient comes from the fused
// op alone: fused + (reference - fused).detach().
TensorFn detached_runway_check(const RunwayOptions& o, const std::vector<Tensor>& inputs) {
  RewiredIntermediates at_inputs;
  rewired_attention(inputs[0], inputs[1], inputs[2], o, &at_inputs);
  const Tensor r0 = reshape(at_inputs.r, {inputs[0].size(0), 1, inputs[0].size(2), inputs[0].size(2)});
  return [o, r0](const std::vector<Tensor>& x) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(x[0].size(-1)));
    Tensor s = mul_scalar(matmul(x[0], transpose(x[1], -1, -2)), scale);
    Tensor reference = matmul(softmax(causal_mask(sub(s, mul_scalar(r0, o.beta))), -1), x[2]);
    Tensor fused = rewired_attention(x[0], x[1], x[2], o);
    return add(fused, sub(reference, fused).detach());
  };
}

// Values with |x| in [0.1, 1) and random sign: keeps clear of kinks at 0 (relu).
Tensor away_from_zero(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = (gen.uniform01() < 0.5 ? -1.0 : 1.0) * gen.uniform(0.1, 1.0);
  return Tensor::from_vector(v, shape, DType::Float64);
}

Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_indices(v, shape); }

// A sample sized to take the CPU backend's threaded path (engine/cpu_backend.cpp,
// engine/cpu_attention.cpp: rows x cols > 2^14 for the row kernels, n > 2^15 for unary
// and > 2^16 for binary ops and strided copies, gemm work > 2^18), with odd row counts
// so the rows split unevenly over the threads. The small samples never get there, and a
// kernel that is only wrong when threaded passed them all. Too large for a full
// Jacobian: checked by random projections (OpSample::fast).
OpSample threaded(const std::string& label, std::vector<Tensor> inputs, TensorFn fn = {}) {
  OpSample s("threaded " + label, std::move(inputs), {}, std::move(fn));
  s.fast = true;
  return s;
}

Samples binary_samples(double lo, double hi) {
  return {
      {"same shape (3,4)", {rnd({3, 4}, 1, lo, hi), rnd({3, 4}, 2, lo, hi)}, {}},
      {"broadcast (3,1)x(1,4)", {rnd({3, 1}, 3, lo, hi), rnd({1, 4}, 4, lo, hi)}, {}},
      {"broadcast (2,3,4)x(4,)", {rnd({2, 3, 4}, 5, lo, hi), rnd({4}, 6, lo, hi)}, {}},
      {"scalar ()x(3,)", {rnd({}, 7, lo, hi), rnd({3}, 8, lo, hi)}, {}},
      {"size-1 (1,)x(1,)", {rnd({1}, 9, lo, hi), rnd({1}, 10, lo, hi)}, {}},
      threaded("(257,259)x(259,)", {rnd({257, 259}, 16, lo, hi), rnd({259}, 17, lo, hi)}),
  };
}

Samples unary_samples(double lo, double hi) {
  return {
      {"scalar ()", {rnd({}, 11, lo, hi)}, {}},
      {"vector (5,)", {rnd({5}, 12, lo, hi)}, {}},
      {"3-D (2,3,4)", {rnd({2, 3, 4}, 13, lo, hi)}, {}},
      threaded("(181,183)", {rnd({181, 183}, 18, lo, hi)}),
  };
}

Samples away_samples() {
  return {
      {"vector (7,)", {away_from_zero({7}, 14)}, {}},
      {"3-D (2,3,4)", {away_from_zero({2, 3, 4}, 15)}, {}},
      threaded("(181,183)", {away_from_zero({181, 183}, 19)}),
  };
}

TensorFn unary(Tensor (*op)(const Tensor&)) {
  return [op](const std::vector<Tensor>& x) { return op(x[0]); };
}
TensorFn binary(Tensor (*op)(const Tensor&, const Tensor&)) {
  return [op](const std::vector<Tensor>& x) { return op(x[0], x[1]); };
}

std::vector<OpEntry> build_table() {
  std::vector<OpEntry> t;
  auto add_entry = [&](OpEntry e) { t.push_back(std::move(e)); };
  auto entry = [](std::string name, std::string summary, TensorFn fn,
                  std::function<std::vector<OpSample>()> samples, bool composite = false) {
    OpEntry e;
    e.name = std::move(name);
    e.summary = std::move(summary);
    e.fn = std::move(fn);
    e.samples = std::move(samples);
    e.composite = composite;
    return e;
  };

  // ---- elementwise, broadcasting ---------------------------------------------------
  add_entry(entry("add", "a + b (broadcasting)", binary(add), [] { return binary_samples(-1, 1); }));
  add_entry(entry("sub", "a - b (broadcasting)", binary(sub), [] { return binary_samples(-1, 1); }));
  add_entry(entry("mul", "a * b (broadcasting)", binary(mul), [] { return binary_samples(-1, 1); }));
  add_entry(entry("div", "a / b (broadcasting), b in [0.5, 2]", binary(div), [] {
               Samples s = binary_samples(0.5, 2.0);
               for (auto& x : s) x.inputs[0] = mul_scalar(add_scalar(x.inputs[0], -1.0), 2.0);
               return s;
             }));
  add_entry(entry("pow", "a ^ b (broadcasting), a in [0.5, 2] so log(a) exists", binary(pow),
             [] { return binary_samples(0.5, 2.0); }));

  // ---- elementwise, unary ------------------------------------------------------------
  add_entry(entry("neg", "-x", unary(neg), [] { return unary_samples(-1, 1); }));
  add_entry(entry("add_scalar", "x + 0.75", [](const std::vector<Tensor>& x) { return add_scalar(x[0], 0.75); },
             [] { return unary_samples(-1, 1); }));
  add_entry(entry("mul_scalar", "x * -1.5", [](const std::vector<Tensor>& x) { return mul_scalar(x[0], -1.5); },
             [] { return unary_samples(-1, 1); }));
  add_entry(entry("pow_scalar", "x ^ 2.5 and x ^ -1, x in [0.5, 2]",
             [](const std::vector<Tensor>& x) { return add(pow_scalar(x[0], 2.5), pow_scalar(x[0], -1.0)); },
             [] { return unary_samples(0.5, 2.0); }));
  add_entry(entry("exp", "exp(x)", unary(exp), [] { return unary_samples(-2, 2); }));
  add_entry(entry("log", "log(x), x in [0.2, 3]", unary(log), [] { return unary_samples(0.2, 3.0); }));
  add_entry(entry("sqrt", "sqrt(x), x in [0.2, 3]", unary(sqrt), [] { return unary_samples(0.2, 3.0); }));
  add_entry(entry("tanh", "tanh(x)", unary(tanh), [] { return unary_samples(-2, 2); }));
  add_entry(entry("sigmoid", "sigmoid(x)", unary(sigmoid), [] { return unary_samples(-3, 3); }));
  add_entry(entry("relu", "relu(x), |x| >= 0.1 (no kink)", unary(relu), away_samples));
  add_entry(entry("gelu", "gelu(x), tanh approximation", unary(gelu), [] { return unary_samples(-3, 3); }));

  // ---- matmul ----------------------------------------------------------------------------
  add_entry(entry("matmul", "(..., M, K) @ (..., K, N), batch broadcast, transposed views", binary(matmul), [] {
               return Samples{
                   {"(3,4)@(4,5)", {rnd({3, 4}, 21), rnd({4, 5}, 22)}, {}},
                   {"(1,1)@(1,1)", {rnd({1, 1}, 23), rnd({1, 1}, 24)}, {}},
                   {"batched (2,3,4)@(2,4,2)", {rnd({2, 3, 4}, 25), rnd({2, 4, 2}, 26)}, {}},
                   {"shared weight (2,3,4)@(4,2)", {rnd({2, 3, 4}, 27), rnd({4, 2}, 28)}, {}},
                   {"broadcast batch (2,1,3,4)@(3,4,2)", {rnd({2, 1, 3, 4}, 29), rnd({3, 4, 2}, 30)}, {}},
                   threaded("(129,67)@(67,131)", {rnd({129, 67}, 35), rnd({67, 131}, 36)}),
               };
             }));
  add_entry(entry("matmul_transposed", "a @ b^T through a transpose view (gemm trans flag)",
             [](const std::vector<Tensor>& x) { return matmul(x[0], transpose(x[1], -1, -2)); },
             [] {
               return Samples{{"(2,3,4)@(2,5,4)^T", {rnd({2, 3, 4}, 31), rnd({2, 5, 4}, 32)}, {}},
                              {"(3,4)@(5,4)^T", {rnd({3, 4}, 33), rnd({5, 4}, 34)}, {}},
                              threaded("(3,43,67)@(3,131,67)^T", {rnd({3, 43, 67}, 37), rnd({3, 131, 67}, 38)})};
             },
             true));

  // ---- shape ops -------------------------------------------------------------------------
  add_entry(entry("reshape", "reshape, also of a non-contiguous view",
             [](const std::vector<Tensor>& x) { return reshape(transpose(x[0], 0, 1), {3, -1}); },
             [] {
               return Samples{{"(2,6) -> T -> (3,4)", {rnd({2, 6}, 41)}, {}},
                              threaded("(258,259) -> T -> (3,-1)", {rnd({258, 259}, 53)})};
             }));
  add_entry(entry("permute", "permute (2,3,4) -> dims (2,0,1)",
             [](const std::vector<Tensor>& x) { return permute(x[0], {2, 0, 1}); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 42)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 54)})}; }));
  add_entry(entry("transpose", "transpose dims 0 and 2 (composite of permute)",
             [](const std::vector<Tensor>& x) { return transpose(x[0], 0, 2); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 43)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 55)})}; },
             true));
  add_entry(entry("slice", "slices along dims 0 and 1, including the edges",
             [](const std::vector<Tensor>& x) {
               const int64_t n = x[0].size(1);
               return concat({reshape(slice(x[0], 1, 1, 3), {-1}), reshape(slice(x[0], 0, 0, 1), {-1}),
                              reshape(slice(x[0], 1, n - 1, n), {-1})}, 0);
             },
             [] {
               return Samples{{"(3,5)", {rnd({3, 5}, 44)}, {}}, {"(4,3)", {rnd({4, 3}, 45)}, {}},
                              threaded("(257,261) columns 1..259", {rnd({257, 261}, 56)}, [](const std::vector<Tensor>& x) {
                                return reshape(slice(x[0], 1, 1, 260), {-1});
                              })};
             }));
  add_entry(entry("expand", "broadcast view (3,1) -> (2,3,4)",
             [](const std::vector<Tensor>& x) { return mul(expand(x[0], {2, 3, 4}), x[1]); },
             [] {
               return Samples{{"(3,1) -> (2,3,4)", {rnd({3, 1}, 46), rnd({2, 3, 4}, 47)}, {}},
                              threaded("(257,1) -> (257,259)", {rnd({257, 1}, 57), rnd({257, 259}, 58)},
                                       [](const std::vector<Tensor>& x) { return mul(expand(x[0], {257, 259}), x[1]); })};
             }));
  add_entry(entry("copy", "copy of a transposed view",
             [](const std::vector<Tensor>& x) { return copy(transpose(x[0], 0, 1)); },
             [] { return Samples{{"(3,4)^T", {rnd({3, 4}, 48)}, {}}, threaded("(259,257)^T", {rnd({259, 257}, 59)})}; }));
  add_entry(entry("concat", "concat along dim 0 and dim 1",
             [](const std::vector<Tensor>& x) {
               Tensor c1 = concat({x[0], x[1]}, 1);  // (2,3)+(2,2) -> (2,5)
               return concat({c1, x[2]}, 0);          // (2,5)+(1,5) -> (3,5)
             },
             [] {
               return Samples{{"(2,3)|(2,2) then /(1,5)", {rnd({2, 3}, 49), rnd({2, 2}, 50), rnd({1, 5}, 51)}, {}},
                              threaded("(257,130)|(257,129)", {rnd({257, 130}, 60), rnd({257, 129}, 64)},
                                       [](const std::vector<Tensor>& x) { return concat({x[0], x[1]}, 1); })};
             }));
  add_entry(entry("split", "split into parts, reordered and scaled (composite of slice)",
             [](const std::vector<Tensor>& x) {
               auto parts = split(x[0], {1, 3, 1}, 1);
               return concat({mul_scalar(parts[2], 3.0), parts[0], mul_scalar(parts[1], -2.0)}, 1);
             },
             [] {
               return Samples{{"(2,5) -> 1|3|1", {rnd({2, 5}, 52)}, {}},
                              threaded("(257,259) -> 100|59|100", {rnd({257, 259}, 65)}, [](const std::vector<Tensor>& x) {
                                auto parts = split(x[0], {100, 59, 100}, 1);
                                return concat({mul_scalar(parts[2], 3.0), parts[0], mul_scalar(parts[1], -2.0)}, 1);
                              })};
             },
             true));

  // ---- reductions ---------------------------------------------------------------------------
  add_entry(entry("sum", "sum over all, one, and several dims, keepdim or not",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(sum(x[0]), {1}), reshape(sum(x[0], {1}), {-1}),
                              reshape(sum(x[0], {0, 2}, true), {-1})}, 0);
             },
             [] {
               return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 61)}, {}},
                              threaded("(3,129,173) over dims 2 and 1", {rnd({3, 129, 173}, 66)}, [](const std::vector<Tensor>& x) {
                                return concat({reshape(sum(x[0], {2}), {-1}), reshape(sum(x[0], {1}), {-1})}, 0);
                              })};
             }));
  add_entry(entry("mean", "mean over dims (composite: sum * 1/n)",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(mean(x[0]), {1}), reshape(mean(x[0], {-1}, true), {-1})}, 0);
             },
             [] {
               return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 62)}, {}},
                              threaded("(3,129,173) over the last dim", {rnd({3, 129, 173}, 67)},
                                       [](const std::vector<Tensor>& x) { return mean(x[0], {-1}); })};
             },
             true));
  add_entry(entry("max", "max over dims; random inputs have no ties",
             [](const std::vector<Tensor>& x) {
               return concat({reshape(max(x[0]), {1}), reshape(max(x[0], {1}), {-1}),
                              reshape(max(x[0], {0, 2}, true), {-1})}, 0);
             },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 63)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 68)})}; }));

  // ---- softmax family, masking, layernorm, cumsum ---------------------------------------------
  add_entry(entry("softmax", "softmax over the last dim and over dim 0",
             [](const std::vector<Tensor>& x) { return add(softmax(x[0], -1), softmax(x[0], 0)); },
             [] {
               return Samples{{"(3,4)", {rnd({3, 4}, 71, -2, 2)}, {}}, {"(1,)", {rnd({1}, 72)}, {}},
                              threaded("(129,131)", {rnd({129, 131}, 77, -2, 2)})};
             }));
  add_entry(entry("log_softmax", "log_softmax over the last dim and over dim 1",
             [](const std::vector<Tensor>& x) { return add(log_softmax(x[0], -1), log_softmax(x[0], 1)); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 73, -2, 2)}, {}}, threaded("(3,43,131)", {rnd({3, 43, 131}, 78, -2, 2)})}; }));
  add_entry(entry("causal_mask", "masking j > i with a finite value (-inf makes differences NaN)",
             [](const std::vector<Tensor>& x) { return causal_mask(x[0], -5.0); },
             [] { return Samples{{"(2,4,4)", {rnd({2, 4, 4}, 74)}, {}}, {"rectangular (3,5)", {rnd({3, 5}, 75)}, {}}}; }));
  add_entry(entry("causal_softmax", "softmax(causal_mask(x, -inf)): masked weights are exactly 0",
             [](const std::vector<Tensor>& x) { return softmax(causal_mask(x[0]), -1); },
             [] { return Samples{{"(2,5,5)", {rnd({2, 5, 5}, 76, -2, 2)}, {}}, threaded("(3,77,77)", {rnd({3, 77, 77}, 79, -2, 2)})}; },
             true));
  add_entry(entry("layernorm", "layernorm over the last dim with weight and bias",
             [](const std::vector<Tensor>& x) { return layernorm(x[0], x[1], x[2]); },
             [] {
               return Samples{{"(2,3,5)", {rnd({2, 3, 5}, 81, -2, 2), rnd({5}, 82, 0.5, 1.5), rnd({5}, 83)}, {}},
                              {"(4,2)", {rnd({4, 2}, 84, -2, 2), rnd({2}, 85, 0.5, 1.5), rnd({2}, 86)}, {}},
                              threaded("(3,43,131)", {rnd({3, 43, 131}, 87, -2, 2), rnd({131}, 88, 0.5, 1.5), rnd({131}, 89)})};
             }));
  add_entry(entry("cumsum", "cumulative sum: inclusive/exclusive, forward/reverse, dims 0 and 1",
             [](const std::vector<Tensor>& x) {
               return concat({cumsum(x[0], 1), cumsum(x[0], 1, true), cumsum(x[0], 1, false, true),
                              cumsum(x[0], 1, true, true), cumsum(x[0], 0, true, false)}, 1);
             },
             [] {
               return Samples{{"(3,4)", {rnd({3, 4}, 91)}, {}}, {"(1,1)", {rnd({1, 1}, 92)}, {}},
                              threaded("(257,259)", {rnd({257, 259}, 93)})};
             }));

  // ---- lookup, losses, dropout -------------------------------------------------------------------
  add_entry(entry("embedding", "rows of a (V, C) table, repeated ids accumulate",
             [](const std::vector<Tensor>& x) { return embedding(x[0], x[1]); },
             [] {
               return Samples{{"(6,3) ids (2,4) with repeats", {rnd({6, 3}, 101), ids({0, 5, 2, 2, 1, 0, 5, 5}, {2, 4})}, {}},
                              {"(1,2) ids (3,)", {rnd({1, 2}, 102), ids({0, 0, 0}, {3})}, {}}};
             }));
  add_entry(entry("cross_entropy", "mean cross-entropy over logits with an ignore index",
             [](const std::vector<Tensor>& x) { return cross_entropy(x[0], x[1], -100); },
             [] {
               return Samples{{"(4,5), one ignored", {rnd({4, 5}, 111, -2, 2), ids({1, -100, 4, 0}, {4})}, {}},
                              {"(2,3,5) 3-D logits", {rnd({2, 3, 5}, 112, -2, 2), ids({0, 1, 2, 3, 4, 0}, {2, 3})}, {}},
                              threaded("(3,43,131), every 7th ignored", {rnd({3, 43, 131}, 113, -2, 2), [] {
                                         std::vector<int64_t> t(129);
                                         for (int64_t i = 0; i < 129; ++i) t[i] = i % 7 == 3 ? -100 : (i * 37) % 131;
                                         return ids(t, {3, 43});
                                       }()})};
             }));
  add_entry(entry("dropout", "dropout p=0.3 with a fixed seed (same mask each evaluation)",
             [](const std::vector<Tensor>& x) {
               Generator gen(7);
               return dropout(x[0], 0.3, gen, true);
             },
             [] { return Samples{{"(4,5)", {rnd({4, 5}, 121)}, {}}, threaded("(257,259)", {rnd({257, 259}, 122)})}; }));

  // ---- a composite: causal attention written with primitives --------------------------------------
  add_entry(entry("causal_attention_primitives",
             "softmax(causal_mask(Q K^T / sqrt(D))) V from primitives, (B,H,T,D)",
             [](const std::vector<Tensor>& x) {
               const double scale = 1.0 / std::sqrt(static_cast<double>(x[0].size(-1)));
               Tensor s = mul_scalar(matmul(x[0], transpose(x[1], -1, -2)), scale);
               return matmul(softmax(causal_mask(s), -1), x[2]);
             },
             [] {
               return Samples{{"B=1,H=2,T=5,D=3", {rnd({1, 2, 5, 3}, 131), rnd({1, 2, 5, 3}, 132), rnd({1, 2, 5, 3}, 133)}, {}},
                              threaded("B=3,H=5,T=41,D=16", qkv(3, 5, 41, 16, 134))};
             },
             true));

  // ---- attention (engine/attention.h) -------------------------------------------------------
  // The sampling grid of the issue: T in {1,2,3,17}, H in {1,3}, D in {1,4}; for the rewired
  // op every (summary, beta, detach) at each shape, with the runway head moving off 0.
  add_entry(entry("attention", "fused causal attention (B,H,T,D), handwritten backward",
                  [](const std::vector<Tensor>& x) { return attention(x[0], x[1], x[2]); }, [] {
                    Samples out;
                    uint64_t seed = 200;
                    for (int64_t t : {1, 2, 3, 17})
                      for (int64_t h : {1, 3})
                        for (int64_t d : {1, 4})
                          out.push_back({fmt::format("B={} H={} T={} D={}", t <= 3 ? 2 : 1, h, t, d),
                                         qkv(t <= 3 ? 2 : 1, h, t, d, seed += 3), {}, {}});
                    out.push_back({"ALiBi B=1 H=3 T=6 D=4", qkv(1, 3, 6, 4, seed += 3), {},
                                   [](const std::vector<Tensor>& x) { return attention(x[0], x[1], x[2], alibi_slopes(3)); }});
                    // T = 41 also crosses the kernels' 32-row causal blocks.
                    out.push_back(threaded("B=3 H=5 T=41 D=16", qkv(3, 5, 41, 16, seed += 3)));
                    out.push_back(threaded("ALiBi B=3 H=5 T=41 D=16", qkv(3, 5, 41, 16, seed += 3), [](const std::vector<Tensor>& x) {
                      return attention(x[0], x[1], x[2], alibi_slopes(5));
                    }));
                    return out;
                  }));
  add_entry(entry("rewired_attention", "fused runway-rewired attention, both summaries, any beta, detach",
                  [](const std::vector<Tensor>& x) { return rewired_attention(x[0], x[1], x[2], RunwayOptions{}); }, [] {
                    Samples out;
                    uint64_t seed = 400;
                    for (int64_t t : {1, 2, 3, 17})
                      for (int64_t h : {1, 3})
                        for (int64_t d : {1, 4}) {
                          int variant = 0;
                          for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop})
                            for (double beta : {0.0, 0.5, -0.7, 3.0})
                              for (bool detach : {false, true}) {
                                RunwayOptions o;
                                o.summary = summary;
                                o.beta = beta;
                                o.detach = detach;
                                o.runway_head = (variant++) % h;
                                const int64_t b = t <= 3 ? 2 : 1;
                                auto inputs = qkv(b, h, t, d, seed += 3);
                                TensorFn fn = [o](const std::vector<Tensor>& x) { return rewired_attention(x[0], x[1], x[2], o); };
                                if (detach) fn = detached_runway_check(o, inputs);
                                out.push_back({fmt::format("T={} H={} D={} {} b={} r={}{}", t, h, d,
                                                           summary == RunwaySummary::Absorption ? "abs" : "2hop",
                                                           beta, o.runway_head, detach ? " det" : ""),
                                               inputs, {}, fn});
                              }
                        }
                    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
                      RunwayOptions o;
                      o.summary = summary;
                      o.runway_head = 1;
                      out.push_back({fmt::format("ALiBi T=6 H=3 D=4 {}", runway_summary_name(summary)), qkv(1, 3, 6, 4, seed += 3), {},
                                     [o](const std::vector<Tensor>& x) {
                                       return rewired_attention(x[0], x[1], x[2], o, nullptr, alibi_slopes(3));
                                     }});
                    }
                    // Threaded sizes: B = 3 batch items (the runway head's stage) and 15 heads.
                    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
                      RunwayOptions o;
                      o.summary = summary;
                      o.beta = summary == RunwaySummary::TwoHop ? -0.7 : 1.3;
                      o.runway_head = summary == RunwaySummary::TwoHop ? 3 : 1;
                      out.push_back(threaded(fmt::format("B=3 H=5 T=41 D=16 {} b={} ALiBi", runway_summary_name(summary), o.beta),
                                             qkv(3, 5, 41, 16, seed += 3), [o](const std::vector<Tensor>& x) {
                                               return rewired_attention(x[0], x[1], x[2], o, nullptr, alibi_slopes(5));
                                             }));
                    }
                    {
                      RunwayOptions o;
                      o.runway_head = 2;
                      o.detach = true;
                      auto inputs = qkv(3, 5, 41, 16, seed += 3);
                      TensorFn fn = detached_runway_check(o, inputs);
                      out.push_back(threaded("B=3 H=5 T=41 D=16 absorption det", std::move(inputs), std::move(fn)));
                    }
                    return out;
                  }));
  add_entry(entry("attention_composite", "attention from primitives (the fused op's twin)",
                  [](const std::vector<Tensor>& x) { return attention_composite(x[0], x[1], x[2], alibi_slopes(2)); },
                  [] {
                    return Samples{{"ALiBi B=2 H=2 T=5 D=3", qkv(2, 2, 5, 3, 600), {}, {}},
                                   threaded("B=3 H=5 T=41 D=16 no ALiBi", qkv(3, 5, 41, 16, 601),
                                            [](const std::vector<Tensor>& x) { return attention_composite(x[0], x[1], x[2]); })};
                  }, true));
  add_entry(entry("rewired_attention_composite", "rewired attention from primitives (the fused op's twin)",
                  [](const std::vector<Tensor>& x) { return rewired_attention_composite(x[0], x[1], x[2], RunwayOptions{}); },
                  [] {
                    Samples out;
                    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
                      RunwayOptions o;
                      o.summary = summary;
                      o.beta = 1.3;
                      o.runway_head = 1;
                      out.push_back({fmt::format("B=2 H=2 T=6 D=3 {}", runway_summary_name(summary)), qkv(2, 2, 6, 3, 610), {},
                                     [o](const std::vector<Tensor>& x) { return rewired_attention_composite(x[0], x[1], x[2], o); }});
                      out.push_back(threaded(fmt::format("B=3 H=5 T=41 D=16 {}", runway_summary_name(summary)), qkv(3, 5, 41, 16, 611),
                                             [o](const std::vector<Tensor>& x) { return rewired_attention_composite(x[0], x[1], x[2], o); }));
                    }
                    return out;
                  }, true));
  add_entry(entry("qkv_attention", "attention from the packed (B,T,3C) projection: rope, standard/rewired, merged heads",
                  [](const std::vector<Tensor>& x) { return qkv_attention(x[0], 2, 10000.0, false, RunwayOptions{}); }, [] {
                    RunwayOptions two_hop;
                    two_hop.summary = RunwaySummary::TwoHop;
                    two_hop.runway_head = 1;
                    return Samples{
                        {"standard rope B=2 T=5 H=2 D=2", {rnd({2, 5, 12}, 91, -1.5, 1.5)}},
                        {"standard no rope, alibi B=1 T=4 H=3 D=2", {rnd({1, 4, 18}, 92, -1.5, 1.5)}, {},
                         [](const std::vector<Tensor>& x) { return qkv_attention(x[0], 3, 0.0, false, RunwayOptions{}, alibi_slopes(3)); }},
                        {"rewired absorption rope B=2 T=6 H=2 D=4", {rnd({2, 6, 24}, 93, -1.5, 1.5)}, {},
                         [](const std::vector<Tensor>& x) { return qkv_attention(x[0], 2, 10000.0, true, RunwayOptions{}); }},
                        {"rewired two_hop head 1 rope B=1 T=6 H=2 D=2", {rnd({1, 6, 12}, 94, -1.5, 1.5)}, {},
                         [two_hop](const std::vector<Tensor>& x) { return qkv_attention(x[0], 2, 10.0, true, two_hop); }},
                        // B T 3C = 3 * 41 * 144 > 2^14: the fused gather + rope runs threaded.
                        threaded("standard rope B=3 T=41 H=3 D=16", {rnd({3, 41, 144}, 95, -1.5, 1.5)},
                                 [](const std::vector<Tensor>& x) { return qkv_attention(x[0], 3, 10000.0, false, RunwayOptions{}); }),
                        threaded("rewired two_hop rope B=3 T=41 H=3 D=16", {rnd({3, 41, 144}, 96, -1.5, 1.5)},
                                 [two_hop](const std::vector<Tensor>& x) { return qkv_attention(x[0], 3, 10000.0, true, two_hop); }),
                    };
                  }));
  add_entry(entry("linear", "x @ W + b in one op (gemm with the bias as start value)",
                  [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); }, [] {
                    return Samples{
                        {"(3,4) W(4,5) b(5)", {rnd({3, 4}, 95), rnd({4, 5}, 96), rnd({5}, 97)}},
                        {"(2,3,4) W(4,2) b(2)", {rnd({2, 3, 4}, 98), rnd({4, 2}, 99), rnd({2}, 100)}},
                        {"(2,3,4) W^T view, no bias", {rnd({2, 3, 4}, 101), rnd({5, 4}, 102)}, {},
                         [](const std::vector<Tensor>& x) { return linear(x[0], transpose(x[1], 0, 1), Tensor()); }},
                        threaded("(3,43,67) W(67,131) b(131)", {rnd({3, 43, 67}, 103), rnd({67, 131}, 104), rnd({131}, 105)}),
                    };
                  }));
  add_entry(entry("rope", "rotary position embedding (rotate-half), offsets and bases",
                  [](const std::vector<Tensor>& x) { return add(rope(x[0]), rope(x[0], 10.0, 3)); },
                  [] {
                    return Samples{{"(2,3,5,4)", {rnd({2, 3, 5, 4}, 620)}, {}, {}}, {"(4,2)", {rnd({4, 2}, 621)}, {}, {}},
                                   threaded("(3,5,37,32)", {rnd({3, 5, 37, 32}, 622)})};
                  }));
  add_entry(entry("learned_positions", "learned absolute positions: x + table[:T] (composite of slice, add)",
                  [](const std::vector<Tensor>& x) { return add(x[0], slice(x[1], 0, 0, x[0].size(-2))); },
                  [] {
                    return Samples{{"x (2,3,4), table (5,4)", {rnd({2, 3, 4}, 630), rnd({5, 4}, 631)}, {}, {}},
                                   threaded("x (3,129,173), table (131,173)", {rnd({3, 129, 173}, 632), rnd({131, 173}, 633)})};
                  }, true));
  return t;
}

}  // namespace

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = build_table();
  return table;
}

const TensorFn& sample_fn(const OpEntry& entry, const OpSample& sample) {
  return sample.fn ? sample.fn : entry.fn;
}

GradcheckOptions sample_options(const OpEntry& entry, const OpSample& sample) {
  GradcheckOptions o;
  o.atol = entry.atol;
  o.rtol = entry.rtol;
  o.fast = entry.fast || sample.fast;
  return o;
}

const OpEntry* find_op(const std::string& name) {
  for (const auto& e : op_table())
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace runway
