// The measuring half of `runway inspect` (lab/inspect.h): the runway coefficients
// recomputed for a standard layer, and the inspect folder written from a model's run
// (every map, the cascade, and an index.html whose references all exist).
#include <catch2/catch.hpp>

#include <filesystem>
#include <set>

#include "engine/npy.h"
#include "engine/random.h"
#include "lab/inspect.h"
#include "lab/study_set.h"
#include "nn/config.h"
#include "nn/gpt.h"
#include "test_support.h"

using Catch::Matchers::Contains;
using namespace runway;
using namespace runway::lab;
using runway::testing::TempDir;
using runway::viz::InspectResult;

namespace {

nn::GPTConfig tiny_config(bool rewired, RunwaySummary summary = RunwaySummary::Absorption) {
  nn::GPTConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.seq_len = 16;
  c.rewired = rewired;
  c.runway.summary = summary;
  c.runway.runway_head = 1;
  return c;
}

}  // namespace

TEST_CASE("lab: R recomputed from P matches the rewired attention's own R") {
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    Generator gen(3);
    nn::GPT model(tiny_config(true, summary), gen);
    std::vector<nn::AttentionTrace> traces;
    std::vector<int64_t> ids = {72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100};
    const int64_t T = static_cast<int64_t>(ids.size());
    model.forward(Tensor::from_indices(ids, {1, T}), &traces);
    for (const auto& trace : traces) {
      const std::vector<double> p = trace.maps.p.to_vector();
      const std::vector<double> r = trace.maps.r.to_vector();
      const std::vector<double> mine = runway_coefficients_from(p, T, summary);
      double worst = 0;
      for (size_t i = 0; i < r.size(); ++i) worst = std::max(worst, std::abs(r[i] - mine[i]));
      CHECK(worst < 1e-5);  // float32 sums of at most T terms in [0, 1]
    }
  }
  // By hand: P = [[1],[.5,.5],[.2,.3,.5]]: absorption R[2,0] = P[1,0] = .5; two_hop R[2,0] = P[2,1] P[1,0] = .15.
  const std::vector<double> p = {1, 0, 0, 0.5, 0.5, 0, 0.2, 0.3, 0.5};
  CHECK(runway_coefficients_from(p, 3, RunwaySummary::Absorption)[6] == Approx(0.5));
  CHECK(runway_coefficients_from(p, 3, RunwaySummary::TwoHop)[6] == Approx(0.15));
  CHECK(runway_coefficients_from(p, 3, RunwaySummary::TwoHop)[3] == 0);  // i - j = 1: empty runway
}

TEST_CASE("lab: inspect writes every map, the cascade and an index.html whose references all exist") {
  TempDir dir;
  const std::string text = "The runway: tokens between.";
  const std::vector<uint8_t> bytes(text.begin(), text.end());
  const int64_t T = static_cast<int64_t>(bytes.size());

  Generator gen(5);
  nn::GPT rewired(tiny_config(true), gen);
  const InspectResult r = inspect_model(rewired, bytes, dir / "rew", {"tiny rewired", true, true});
  for (const char* name : {"L0_P.png", "L0_R.npy", "L1_H0_A.png", "L1_H1_Arew.png", "L1_H1_diff.npy", "cascade.svg",
                           "cascade.json", "inspect.json", "index.html"})
    CHECK(std::filesystem::file_size(dir / (std::string("rew/") + name)) > 0);
  CHECK(runway::testing::check_html_references(dir / "rew/index.html") >= 2 * (2 + 3 * 2) + 1);
  REQUIRE(r.cascade.layers.size() == 2);
  CHECK(r.cascade.layers[0].runway_share == 0);  // no mixing before the first layer
  CHECK(r.cascade.layers[1].runway_share > 0);

  // The saved A' is the model's own: rows sum to 1 and it differs from A (beta = 1).
  const Tensor arew = read_npy(dir / "rew/L1_H0_Arew.npy");
  const Tensor a = read_npy(dir / "rew/L1_H0_A.npy");
  CHECK(arew.shape() == Shape{T, T});
  const std::vector<double> av = a.to_vector(), rv = arew.to_vector();
  double row = 0, diff = 0;
  for (int64_t j = 0; j < T; ++j) row += rv[(T - 1) * T + j];
  for (size_t i = 0; i < av.size(); ++i) diff = std::max(diff, std::abs(av[i] - rv[i]));
  CHECK(row == Approx(1).epsilon(1e-5));
  CHECK(diff > 1e-4);

  nn::GPT standard(tiny_config(false), gen);
  inspect_model(standard, bytes, dir / "std", {"tiny standard", false, true});
  CHECK(std::filesystem::exists(dir / "std/L0_R.png"));
  CHECK_FALSE(std::filesystem::exists(dir / "std/L0_H0_Arew.png"));
  CHECK_FALSE(std::filesystem::exists(dir / "std/L0_H0_A.npy"));  // write_npy = false
  runway::testing::check_html_references(dir / "std/index.html");

  CHECK_THROWS_WITH(inspect_model(standard, {}, dir / "x"), Contains("the text is empty"));
  nn::GPTConfig learned = tiny_config(false);
  learned.pos = nn::PositionEncoding::Learned;
  nn::GPT learned_model(learned, gen);
  CHECK_THROWS_WITH(inspect_model(learned_model, std::vector<uint8_t>(17, 'a'), dir / "x"),
                    Contains("the text is 17 bytes, this model can inspect at most 16"));
}

TEST_CASE("study set: studies/paper-claims.json describes the study of the paper's claims") {
  StudyOptions o;
  read_study_set(std::string(RUNWAY_SOURCE_DIR) + "/studies/paper-claims.json", o);
  REQUIRE(o.configs.size() == 10);
  CHECK(o.configs[0].label == "standard");  // the baseline of the paired differences
  CHECK(o.seeds == std::vector<uint64_t>{1, 2, 3});
  CHECK(o.steps == 2400);
  CHECK(o.eval_lengths_in_L == std::vector<int64_t>{1, 2, 4, 8, 16, 32});
  CHECK(o.passkey_lengths_in_L == std::vector<double>{1, 1.25, 1.5, 2, 4});  // retrieval fades between L and 2L
  std::set<std::string> labels;
  const nn::TrainConfig* absorption = nullptr;
  const nn::TrainConfig* wider = nullptr;
  int nope = 0, two_hop = 0;
  for (const StudyConfig& c : o.configs) {
    INFO(c.label);
    CHECK(labels.insert(c.label).second);
    CHECK_NOTHROW(c.train.validate());
    CHECK(c.train.model.seq_len == 128);  // the same data and budget for every configuration
    if (c.label == "absorption") absorption = &c.train;
    if (c.label == "standard width 128") wider = &c.train;
    nope += c.train.model.pos == nn::PositionEncoding::None;
    two_hop += c.train.model.rewired && c.train.model.runway.summary == RunwaySummary::TwoHop;
  }
  CHECK(nope == 3);
  CHECK(two_hop == 2);
  REQUIRE(absorption != nullptr);
  REQUIRE(wider != nullptr);
  // Parameter efficiency: the larger standard model has 1.3-2x the rewired one's parameters.
  const double ratio = static_cast<double>(nn::model_parameter_count(wider->model)) /
                       static_cast<double>(nn::model_parameter_count(absorption->model));
  CHECK(ratio >= 1.3);
  CHECK(ratio <= 2.0);
}

TEST_CASE("study set: a bad file is refused with its file and key named") {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    const std::string path = dir / "set.json";
    runway::testing::write_bytes(path, text);
    StudyOptions o;
    try {
      read_study_set(path, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string one = R"({"label": "a", "set": {}})";
  CHECK_THAT(error_of("{not json"), Contains("is not valid JSON"));
  CHECK_THAT(error_of(R"({"configs": [], "seeds": [1]})"), Contains("'configs' must be a non-empty list"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "sedes": [1]})"), Contains("unknown key 'sedes'"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "steps": 2.5})"), Contains("steps: must be an integer"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "steps": 0})"), Contains("steps: must be in [1,"));
  CHECK_THAT(error_of(R"({"configs": [{"set": {}}]})"), Contains("configs[0]: needs a non-empty \"label\""));
  CHECK_THAT(error_of(R"({"configs": [{"label": "x", "set": {"n_layers": 2}}]})"),
             Contains("configs[0] (x)") && Contains("n_layers"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "eval": {"lengths_in_L": [1, 0]}})"),
             Contains("eval.lengths_in_L[1]: must be in [1,"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "eval": {"lengths_in_L": [1.5]}})"),
             Contains("eval.lengths_in_L[0]: must be an integer"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "eval": {"passkey_lengths_in_L": [1.5, 0.5]}})"),
             Contains("eval.passkey_lengths_in_L[1]: must be in [1,"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "eval": {"passkey_lengths_in_L": [1, "2"]}})"),
             Contains("eval.passkey_lengths_in_L[1]: must be a number"));
  CHECK_THAT(error_of(R"({"configs": [)" + one + R"(], "eval": {"passkey_lengths_in_L": []}})"),
             Contains("eval.passkey_lengths_in_L: must be a non-empty list of numbers"));
  CHECK_THAT(error_of(R"({"base": {"lr": -1}, "configs": [)" + one + "]}"), Contains("base") && Contains("lr"));
}
