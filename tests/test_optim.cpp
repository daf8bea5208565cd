// AdamW against the update rule worked by hand, the schedule, clipping, and a tiny
// model whose loss must fall.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/ops.h"
#include "engine/random.h"
#include "nn/gpt.h"
#include "nn/optim.h"

using namespace runway;
using namespace runway::nn;

namespace {
class TwoParams : public Module {
 public:
  TwoParams() {
    w = add_parameter("w", Tensor::from_vector({1.0, -2.0}, {2}, DType::Float64), true);
    b = add_parameter("b", Tensor::from_vector({0.5}, {1}, DType::Float64), false);
  }
  Tensor w, b;
};
}  // namespace

TEST_CASE("AdamW follows the update rule, with decoupled decay only where asked") {
  TwoParams m;
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.99;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  AdamW opt(m.named_parameters(), o);
  const double lr = 0.01;
  // Two steps with gradients g1 = (3, -4), 2 and g2 = (1, 1), -1 (set by a linear loss).
  std::vector<std::pair<std::vector<double>, double>> grads{{{3, -4}, 2}, {{1, 1}, -1}};
  std::vector<double> w{1.0, -2.0}, mw{0, 0}, vw{0, 0};
  double b = 0.5, mb = 0, vb = 0;
  for (size_t t = 1; t <= grads.size(); ++t) {
    const auto& [gw, gb] = grads[t - 1];
    opt.zero_grad();
    Tensor gwt = Tensor::from_vector(gw, {2}, DType::Float64), gbt = Tensor::from_vector({gb}, {1}, DType::Float64);
    add(sum(mul(m.w, gwt)), sum(mul(m.b, gbt))).backward();
    opt.step(lr);
    const double c1 = 1 - std::pow(0.9, t), c2 = 1 - std::pow(0.99, t);
    for (int i = 0; i < 2; ++i) {
      mw[i] = 0.9 * mw[i] + 0.1 * gw[i];
      vw[i] = 0.99 * vw[i] + 0.01 * gw[i] * gw[i];
      w[i] = w[i] * (1 - lr * 0.1) - lr * (mw[i] / c1) / (std::sqrt(vw[i] / c2) + 1e-8);
    }
    mb = 0.9 * mb + 0.1 * gb;
    vb = 0.99 * vb + 0.01 * gb * gb;
    b = b - lr * (mb / c1) / (std::sqrt(vb / c2) + 1e-8);  // no decay on b
    CHECK(m.w.to_vector()[0] == Approx(w[0]).epsilon(1e-12));
    CHECK(m.w.to_vector()[1] == Approx(w[1]).epsilon(1e-12));
    CHECK(m.b.item() == Approx(b).epsilon(1e-12));
  }
  CHECK(opt.steps_taken() == 2);
}

// Many parameters, float32 and float64, large enough that the fused update runs as one
// parallel region split across parameter boundaries: every element must follow the
// same rule as a scalar loop in double.
class ManyParams : public Module {
 public:
  explicit ManyParams(Generator& gen) {
    const std::vector<int64_t> sizes{5, 40000, 3, 70001, 1};
    for (size_t i = 0; i < sizes.size(); ++i)
      ps.push_back(add_parameter("p" + std::to_string(i), Tensor::uniform({sizes[i]}, -1, 1, gen), i % 2 == 1));
    ps.push_back(add_parameter("d", Tensor::uniform({33000}, -1, 1, gen, DType::Float64), true));
  }
  std::vector<Tensor> ps;
};

TEST_CASE("AdamW over many float32 and float64 parameters matches the rule element by element") {
  Generator gen(7);
  ManyParams m(gen);
  AdamWOptions o;
  AdamW opt(m.named_parameters(), o);
  const double lr = 0.003, scale = 0.5;
  std::vector<std::vector<double>> ref, mom1, mom2;
  for (const Tensor& p : m.ps) {
    ref.push_back(p.to_vector());
    mom1.emplace_back(p.numel(), 0.0);
    mom2.emplace_back(p.numel(), 0.0);
  }
  for (int t = 1; t <= 2; ++t) {
    opt.zero_grad();
    std::vector<Tensor> gs;
    for (const Tensor& p : m.ps) {  // d/dp sum(p * g) = g
      gs.push_back(Tensor::uniform(p.shape(), -2, 2, gen, p.dtype()));
      sum(mul(p, gs.back())).backward();
    }
    opt.step(lr, scale);
    const double c1 = 1 - std::pow(o.beta1, t), c2 = 1 - std::pow(o.beta2, t);
    for (size_t i = 0; i < m.ps.size(); ++i) {
      const bool decay = i % 2 == 1 || i == m.ps.size() - 1;
      const std::vector<double> g = gs[i].to_vector(), got = m.ps[i].to_vector();
      const double tol = m.ps[i].dtype() == DType::Float32 ? 2e-6 : 1e-12;
      int64_t bad = 0;
      for (size_t j = 0; j < g.size(); ++j) {
        const double gj = g[j] * scale;
        mom1[i][j] = o.beta1 * mom1[i][j] + (1 - o.beta1) * gj;
        mom2[i][j] = o.beta2 * mom2[i][j] + (1 - o.beta2) * gj * gj;
        ref[i][j] = ref[i][j] * (decay ? 1 - lr * o.weight_decay : 1.0) -
                    lr * (mom1[i][j] / c1) / (std::sqrt(mom2[i][j] / c2) + o.eps);
        if (std::abs(got[j] - ref[i][j]) > tol * (1 + std::abs(ref[i][j]))) ++bad;
        ref[i][j] = got[j];  // carry on from the optimizer's own float values
      }
      INFO("parameter " << i << ", step " << t);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("warmup then cosine decay") {
  CHECK(learning_rate(0, 100, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(learning_rate(9, 100, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(learning_rate(10, 100, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(learning_rate(55, 100, 10, 1.0, 0.1) == Approx(0.1 + 0.9 * 0.5));
  CHECK(learning_rate(100, 100, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(learning_rate(500, 100, 10, 1.0, 0.1) == Approx(0.1));
}

TEST_CASE("global gradient norm and clipping") {
  TwoParams m;
  add(sum(mul(m.w, Tensor::from_vector({3, 4}, {2}, DType::Float64))), sum(mul(m.b, Tensor::from_vector({12}, {1}, DType::Float64)))).backward();
  CHECK(global_grad_norm(m.named_parameters()) == Approx(13.0));
  CHECK(clip_scale(13.0, 1.0) == Approx(1.0 / 13.0));
  CHECK(clip_scale(0.5, 1.0) == 1.0);
  CHECK(clip_scale(13.0, 0.0) == 1.0);
}

TEST_CASE("a tiny GPT fits a repeated sequence: the loss falls far below uniform") {
  GPTConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 16;
  c.seq_len = 8;
  c.rewired = true;
  Generator g(1);
  GPT model(c, g);
  AdamW opt(model.named_parameters(), AdamWOptions{});
  std::vector<int64_t> seq{10, 20, 30, 40, 50, 60, 70, 80, 90};
  Tensor ids = Tensor::from_indices(std::vector<int64_t>(seq.begin(), seq.end() - 1), {1, 8});
  Tensor targets = Tensor::from_indices(std::vector<int64_t>(seq.begin() + 1, seq.end()), {1, 8});
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    Tensor loss = model.loss(ids, targets);
    loss.backward();
    opt.step(1e-2);
    (step == 0 ? first : last) = loss.item();
  }
  CHECK(first == Approx(std::log(256.0)).margin(0.1));
  CHECK(last < 0.5);
}

// The numbers below were worked out by hand (and checked in a separate Python session)
// from the update rule in nn/optim.h, not by running the code under test:
//   step 1 (lr 0.1, b1 0.9, b2 0.999, wd 0.1): m = 0.1 g, v = 0.001 g^2, the bias
//     corrections 0.1 and 0.001 make m_hat = g, sqrt(v_hat) = |g|, so the update is
//     lr g / (|g| + 1e-8); w (decayed) first shrinks by 1 - lr wd = 0.99:
//       w0 = 1.0 * 0.99 - 0.1 * 0.5 / (0.5 + 1e-8)       = 0.890000002
//       w1 = -2.0 * 0.99 + 0.1 * 3 / (3 + 1e-8)           = -1.8800000003333...
//       b  = 0.5 - 0.1 * 2 / (2 + 1e-8)  (no decay)        = 0.4000000005
//   step 2 (lr 0.05, g_w = (-1, 1), g_b = 0.25): c1 = 0.19, c2 = 0.001999;
//       w0: m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975,
//           w0 = 0.890000002 * 0.995 + 0.05 * (0.055 / 0.19) / (sqrt(0.00124975 / 0.001999) + 1e-8)
//              = 0.9038551781102827
//       w1 = -1.8505890718234548,  b = 0.3621388433385029
// An update without bias correction, with coupled (L2) decay, or with decay on b moves
// every one of these values by far more than the tolerance.
TEST_CASE("AdamW one and two steps match values worked by hand") {
  TwoParams m;
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  AdamW opt(m.named_parameters(), o);
  auto step = [&](double lr, std::vector<double> gw, double gb) {
    opt.zero_grad();  // d/dw sum(w * gw) = gw: the gradient is set by a linear loss
    add(sum(mul(m.w, Tensor::from_vector(gw, {2}, DType::Float64))),
        sum(mul(m.b, Tensor::from_vector({gb}, {1}, DType::Float64))))
        .backward();
    opt.step(lr);
  };
  step(0.1, {0.5, -3.0}, 2.0);
  CHECK(m.w.to_vector()[0] == Approx(0.890000002).epsilon(1e-13));
  CHECK(m.w.to_vector()[1] == Approx(-1.8800000003333333).epsilon(1e-13));
  CHECK(m.b.item() == Approx(0.4000000005).epsilon(1e-13));
  CHECK(opt.first_moments()[0].to_vector()[1] == Approx(-0.3).epsilon(1e-13));
  CHECK(opt.second_moments()[0].to_vector()[1] == Approx(0.009).epsilon(1e-13));
  step(0.05, {-1.0, 1.0}, 0.25);
  CHECK(m.w.to_vector()[0] == Approx(0.9038551781102827).epsilon(1e-13));
  CHECK(m.w.to_vector()[1] == Approx(-1.8505890718234548).epsilon(1e-13));
  CHECK(m.b.item() == Approx(0.3621388433385029).epsilon(1e-13));
  CHECK(opt.first_moments()[1].to_vector()[0] == Approx(0.205).epsilon(1e-13));
  CHECK(opt.second_moments()[1].to_vector()[0] == Approx(0.0040585).epsilon(1e-13));
}

// Clipping as the trainer does it: global norm, clip_scale, step(lr, scale). A large eps
// makes AdamW's first update lr * gs / (|gs| + eps) (gs the clipped gradient) far from
// lr * sign(gs), so the update shows the scale. The hand-made gradient (3, 4) on w and 12
// on b has global norm 13; max norm 1 scales it by 1/13, and with lr 1, eps 10, no decay:
//   dw0 = -(3/13) / (3/13 + 10) = -3/133,  dw1 = -4/134,  db = -12/142
// (unclipped it would be -3/13, -4/14, -12/22).
TEST_CASE("a clipped step applies the update of the scaled gradient, worked by hand") {
  TwoParams m;
  AdamWOptions o;
  o.eps = 10.0;
  o.weight_decay = 0.0;
  AdamW opt(m.named_parameters(), o);
  add(sum(mul(m.w, Tensor::from_vector({3, 4}, {2}, DType::Float64))),
      sum(mul(m.b, Tensor::from_vector({12}, {1}, DType::Float64))))
      .backward();
  const double norm = global_grad_norm(m.named_parameters());
  CHECK(norm == Approx(13.0).epsilon(1e-15));
  const double scale = clip_scale(norm, 1.0);
  CHECK(scale == Approx(1.0 / 13.0).epsilon(1e-15));
  opt.step(1.0, scale);
  CHECK(m.w.to_vector()[0] == Approx(1.0 - 3.0 / 133.0).epsilon(1e-14));
  CHECK(m.w.to_vector()[1] == Approx(-2.0 - 4.0 / 134.0).epsilon(1e-14));
  CHECK(m.b.item() == Approx(0.5 - 12.0 / 142.0).epsilon(1e-14));
  // The moments hold the clipped gradient: m = (1 - b1) g / 13.
  CHECK(opt.first_moments()[1].to_vector()[0] == Approx(0.1 * 12.0 / 13.0).epsilon(1e-13));
}

// The schedule at chosen steps, from its documented definition (docs/usage.md, optim.h):
// peak 0.01, warmup 4, total 12, floor ratio 0.1. Warmup step s (0-based) runs at
// peak (s + 1) / warmup; from step 4, progress (s - 4) / 8 follows
// floor + (peak - floor) (1 + cos(pi progress)) / 2 down to the floor 0.001 at step 12,
// which holds from then on.
TEST_CASE("the learning rate at given steps: warmup, cosine, floor") {
  const double peak = 0.01, floor = 0.001;
  const std::vector<std::pair<int64_t, double>> expected{
      {0, 0.0025}, {1, 0.005}, {2, 0.0075}, {3, 0.01},  // linear warmup
      {4, 0.01},                                        // cosine starts at the peak
      {6, floor + 0.009 * (1 + std::sqrt(0.5)) / 2},    // progress 1/4: cos = sqrt(1/2)
      {8, 0.0055},                                      // progress 1/2: halfway
      {10, floor + 0.009 * (1 - std::sqrt(0.5)) / 2},   // progress 3/4
      {12, floor}, {13, floor}, {1000, floor}};         // the floor
  for (const auto& [s, lr] : expected) {
    INFO("step " << s);
    CHECK(learning_rate(s, 12, 4, peak, 0.1) == Approx(lr).epsilon(1e-12));
  }
  // No warmup: step 0 is already the peak.
  CHECK(learning_rate(0, 12, 0, peak, 0.1) == Approx(peak).epsilon(1e-12));
  CHECK(learning_rate(6, 12, 0, peak, 0.1) == Approx(0.0055).epsilon(1e-12));
}
