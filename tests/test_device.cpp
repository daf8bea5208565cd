// Choosing a device (nn/device.h), moving a model (Module::to), and what a run on one
// device leaves for another: the parts that can be checked without a GPU. The CPU-vs-
// CUDA parity itself is tests/cuda/test_cuda_model.cpp; the last test case here measures the
// float32 rounding error that parity's tolerances (tests/cuda/model_parity.h) must cover.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "tests/cuda/model_parity.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "nn/device.h"
#include "nn/checkpoint.h"
#include "nn/train.h"
#include "tests/test_support.h"
#include "tests/train_test_support.h"

using namespace runway;
using namespace runway::nn;
using runway::testing::run_losses;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;
namespace mp = runway::model_parity;

namespace {

TrainConfig tiny_config(const std::string& data) {
  TrainConfig c = runway::testing::tiny_train_config(data);
  c.steps = 6;
  c.warmup = 2;
  c.eval_every = 3;
  c.eval_batches = 1;
  return c;
}

std::string make_corpus(const std::string& dir) {
  fs::create_directories(dir + "/corpus");
  std::ofstream(dir + "/corpus/a.txt") << mp::corpus_text();
  return dir + "/corpus";
}

}  // namespace

TEST_CASE("parse_device accepts cpu and cuda and names the allowed values otherwise") {
  CHECK(parse_device("cpu") == Device::CPU);
  CHECK(device_names() == std::vector<std::string>{"cpu", "cuda"});
  CHECK_THROWS_WITH(parse_device("banana"), Contains("unknown device 'banana'") && Contains("allowed values are cpu, cuda"));
  CHECK_THROWS_WITH(parse_device("CUDA"), Contains("unknown device 'CUDA'"));
  CHECK_THROWS_WITH(parse_device(""), Contains("unknown device ''"));
  CHECK(describe_device(Device::CPU) == "cpu");
  if (backend_available(Device::CUDA)) {
    CHECK(parse_device("cuda") == Device::CUDA);
    CHECK_THAT(describe_device(Device::CUDA), Contains("cuda"));
  } else {
    // The reason load_backends() recorded (no CUDA in this build, no driver, no device).
    CHECK_THROWS_WITH(parse_device("cuda"), Contains("device 'cuda' is not usable") && Contains("no cuda backend"));
    CHECK_THROWS_WITH(require_device(Device::CUDA), Contains("device 'cuda' is not usable"));
  }
}

TEST_CASE("Module::to keeps every handle on the same parameter and drops gradients") {
  Generator gen(3);
  GPTConfig c;
  c.n_layer = 1;
  c.n_embd = 16;
  c.n_head = 2;
  c.seq_len = 8;
  GPT model(c, gen);
  CHECK(model.device() == Device::CPU);
  const auto before = model.named_parameters();
  std::vector<std::vector<double>> values;
  for (const auto& p : before) values.push_back(p.tensor.to_vector());
  model.loss(Tensor::from_indices(std::vector<int64_t>(8, 65), {1, 8}), Tensor::from_indices(std::vector<int64_t>(8, 66), {1, 8}))
      .backward();
  REQUIRE(model.wte.grad().defined());
  model.to(Device::CPU);
  CHECK_FALSE(model.wte.grad().defined());
  const auto after = model.named_parameters();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    CHECK(after[i].tensor.impl() == before[i].tensor.impl());  // the same parameter object
    CHECK(after[i].tensor.to_vector() == values[i]);
    CHECK(after[i].tensor.requires_grad());
  }
  CHECK(model.wte.impl() == model.token_embedding->weight.impl());
  if (!backend_available(Device::CUDA)) {
    // A failed move leaves the model where it was.
    CHECK_THROWS_WITH(model.to(Device::CUDA), Contains("no cuda backend"));
    CHECK(model.device() == Device::CPU);
    CHECK(model.named_parameters()[0].tensor.to_vector() == values[0]);
  }
}

TEST_CASE("the device is a property of the run: not in config.json, refused as a config key") {
  TrainConfig c;
  CHECK_THROWS_WITH(c.update_from_json(nlohmann::json{{"device", "cuda"}}, "cfg.json"),
                    Contains("cfg.json") && Contains("'device' is not a config key") && Contains("--device"));
  CHECK_FALSE(c.to_json().contains("device"));
}

TEST_CASE("asking for an unusable device fails before anything is written") {
  if (backend_available(Device::CUDA)) {
    SUCCEED("CUDA is available here; tests/cuda/test_cuda_model.cpp covers training on it");
    return;
  }
  runway::testing::TempDir dir;
  const TrainConfig c = tiny_config(make_corpus(dir.path));
  CHECK_THROWS_WITH(Trainer(c, dir / "run", false, 0, Device::CUDA), Contains("device 'cuda' is not usable"));
  CHECK_FALSE(fs::exists(dir / "run"));
  {
    Trainer t(c, dir / "cpu", false);
    run_losses(t);
  }
  CHECK_THROWS_WITH(load_model(dir / "cpu", Device::CUDA), Contains("device 'cuda' is not usable"));
  CHECK_THROWS_WITH(Trainer(c, dir / "cpu", true, 0, Device::CUDA), Contains("device 'cuda' is not usable"));
}

TEST_CASE("checkpoints hold CPU float32 tensors and no device, and load_model(dir, device) loads them") {
  runway::testing::TempDir dir;
  const TrainConfig c = tiny_config(make_corpus(dir.path));
  Trainer t(c, dir / "run", false, 0, Device::CPU);
  CHECK(t.device() == Device::CPU);
  run_losses(t);
  for (const std::string& f : {dir.path + "/run/config.json", require_checkpoint(dir.path + "/run").dir + "/state.json"})
    CHECK(runway::testing::read_bytes(f).find("device") == std::string::npos);
  const SafetensorsFile file = read_safetensors(require_checkpoint(dir.path + "/run").dir + "/model.safetensors");
  const auto params = t.model().named_parameters();
  REQUIRE(file.tensors.size() == params.size());
  for (const auto& [name, tensor] : file.tensors) {
    CHECK(tensor.device() == Device::CPU);
    CHECK(tensor.dtype() == DType::Float32);
  }
  // Both overloads give the trained weights, bit for bit, on the CPU.
  auto a = load_model(dir.path + "/run", Device::CPU);
  auto b = load_model(dir.path + "/run");
  CHECK(a->device() == Device::CPU);
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(a->named_parameters()[i].tensor.to_vector() == params[i].tensor.to_vector());
    CHECK(b->named_parameters()[i].tensor.to_vector() == params[i].tensor.to_vector());
  }
}

// The float32 error that the CPU-vs-CUDA tolerances must cover, measured here against
// float64 on the CPU for every parity variant (same weights, same batches): each float32
// implementation is about this far from exact, so two of them differ by at most ~2x.
// Requiring 10x headroom means the tolerances stay meaningful (not loose enough to hide
// a bug, not so tight that rounding trips them) as the model code changes.
TEST_CASE("whole-model float32 error on the CPU is 10x below the CUDA parity tolerances") {
  for (const auto& v : mp::variants()) {
    INFO(v.name);
    auto m32 = mp::make_model(v.config, DType::Float32, Device::CPU);
    auto m64 = mp::make_model(v.config, DType::Float64, Device::CPU);
    const mp::StepResult r32 = mp::loss_and_grads(*m32), r64 = mp::loss_and_grads(*m64);
    const double loss_err = mp::relative_diff(r32.loss, r64.loss);
    double grad_err = 0;
    std::string worst;
    for (size_t i = 0; i < r32.grads.size(); ++i) {
      const double e = mp::scaled_diff(r32.grads[i], r64.grads[i]);
      if (e >= grad_err) grad_err = e, worst = r32.names[i];
    }
    const auto c32 = mp::loss_curve(*m32), c64 = mp::loss_curve(*m64);
    REQUIRE(c32.size() == static_cast<size_t>(mp::kCurveSteps));
    double curve_err = 0;
    for (size_t s = 0; s < c32.size(); ++s) curve_err = std::max(curve_err, mp::relative_diff(c32[s], c64[s]));
    WARN(fmt::format("{}: float32 vs float64: loss {:.2e} (tol {:.0e}), worst grad {:.2e} ({}; tol {:.0e}), "
                     "10-step curve {:.2e} (tol {:.0e}); loss {:.4f} -> {:.4f}",
                     v.name, loss_err, mp::kLossTol, grad_err, worst, mp::kGradTol, curve_err, mp::kCurveTol,
                     c64.front(), c64.back()));
    CHECK(loss_err < mp::kLossTol / 10);
    CHECK(grad_err < mp::kGradTol / 10);
    CHECK(curve_err < mp::kCurveTol / 10);
    CHECK(c64.back() < c64.front());  // the recipe trains: the curve is worth comparing
  }
}
