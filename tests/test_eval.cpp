// Evaluation: bits per byte against a hand computation (per-window forward, log-softmax
// in double), the uniform model's 8 bits, window subsampling, learned positions past
// seq_len; passkey and recall plumbing against unbatched hand decoding and against
// models whose predictions are known (all-zero: byte 0 everywhere; "constant": '7').
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "nn/data.h"
#include "nn/eval.h"
#include "nn/gpt.h"

using namespace runway;
using namespace runway::nn;
using Catch::Matchers::Contains;

namespace {

GPTConfig tiny(PositionEncoding pos = PositionEncoding::Rope, bool rewired = false) {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.seq_len = 16;
  c.pos = pos;
  c.rewired = rewired;
  c.runway.runway_head = 1;
  return c;
}

std::vector<uint8_t> random_bytes(int64_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<uint8_t> v(static_cast<size_t>(n));
  for (auto& b : v) b = static_cast<uint8_t>(g.below(256));
  return v;
}

// Random GPT weights are near-uniform over bytes; scale them up so the logits differ
// clearly between positions and windows (a wrong window or target would show).
void sharpen(GPT& model, double factor) {
  for (const auto& p : model.named_parameters()) {
    if (p.name.find("ln_") != std::string::npos) continue;
    Tensor t = p.tensor;  // a handle sharing the parameter
    float* d = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = static_cast<float>(d[i] * factor);
  }
}

void zero_model(GPT& model) {
  for (const auto& p : model.named_parameters()) {
    Tensor t = p.tensor;
    float* d = t.data<float>();
    std::fill(d, d + t.numel(), 0.0f);
  }
}

Tensor param(const GPT& model, const std::string& name) {
  for (const auto& p : model.named_parameters())
    if (p.name == name) return p.tensor;
  FAIL("no parameter " << name);
  return {};
}

// Every parameter zero except wte['7'][0] = 1 and ln_f.bias[0] = 1: the blocks add
// nothing, ln_f outputs its bias, so logits = wte @ bias at every position: 1 for '7',
// 0 elsewhere. The model predicts '7' everywhere.
void constant_seven_model(GPT& model) {
  zero_model(model);
  Tensor wte = param(model, "wte.weight");
  wte.data<float>()['7' * model.config.n_embd + 0] = 1.0f;
  param(model, "ln_f.bias").data<float>()[0] = 1.0f;
}

// A model that predicts its current input byte: blocks zeroed (they add nothing),
// wte random with width 64, ln_f weight 1 and bias 0, so the logits at a position
// holding byte b are normalise(wte[b]) . wte[v], largest at v = b (checked).
void identity_model(GPT& model) {
  zero_model(model);
  Tensor wte = param(model, "wte.weight");
  Generator g(99);
  float* w = wte.data<float>();
  for (int64_t i = 0; i < wte.numel(); ++i) w[i] = static_cast<float>(g.normal());
  Tensor ln = param(model, "ln_f.weight");
  std::fill(ln.data<float>(), ln.data<float>() + ln.numel(), 1.0f);
}

// run_eval_suite over `val` for a model trained with its own config, nobody watching.
nlohmann::json suite(const GPT& model, const std::vector<uint8_t>& val, const EvalSuiteOptions& o) {
  TrainConfig config;
  config.model = model.config;
  EvalSuiteObserver nobody;
  return run_eval_suite(model, config, "bytes", val, Device::CPU, o, nobody);
}

int64_t argmax_row(const std::vector<double>& v, int64_t offset, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[offset + i] > v[offset + best]) best = i;
  return best;
}

// Sum over the windows of -log softmax(logits)[target] (natural log) for the scored
// targets, one window at a time, computed in double from the logits.
struct HandSum {
  double nats = 0;
  int64_t count = 0;
};
HandSum hand_loss(const GPT& model, const std::vector<uint8_t>& bytes, int64_t T, const std::vector<EvalWindow>& windows) {
  NoGradGuard guard;
  HandSum s;
  for (const EvalWindow& w : windows) {
    std::vector<int64_t> ids(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) ids[t] = bytes[w.offset + t];
    const std::vector<double> logits = model.forward(Tensor::from_indices(ids, {1, T})).to_vector();
    for (int64_t t = w.score_from; t < T; ++t) {
      const double* row = logits.data() + t * 256;
      const double m = *std::max_element(row, row + 256);
      double z = 0;
      for (int v = 0; v < 256; ++v) z += std::exp(row[v] - m);
      s.nats += -(row[bytes[w.offset + t + 1]] - m - std::log(z));
      ++s.count;
    }
  }
  return s;
}

}  // namespace

TEST_CASE("bits per byte equals a per-window hand computation, non-overlapping and strided") {
  Generator g(11);
  GPT model(tiny(), g);
  sharpen(model, 20.0);
  const int64_t n = 90, T = 8;
  const std::vector<uint8_t> bytes = random_bytes(n, 12);
  for (int64_t stride : {int64_t{0}, int64_t{3}}) {
    INFO("stride " << stride);
    const auto windows = stride == 0 ? sequential_windows(n, T) : strided_windows(n, T, stride);
    const HandSum hand = hand_loss(model, bytes, T, windows);
    CHECK(hand.count == n - 1);  // every target scored once
    const double expected = hand.nats / hand.count / std::log(2.0);
    for (int64_t batch : {int64_t{1}, int64_t{3}, int64_t{100}}) {
      INFO("batch " << batch);
      const EvalCurvePoint p = bits_per_byte(model, bytes, T, stride, 0, batch);
      CHECK(p.available);
      CHECK(p.T == T);
      CHECK(p.stride == (stride == 0 ? T : stride));
      CHECK(p.windows == static_cast<int64_t>(windows.size()));
      CHECK(p.windows_total == p.windows);
      CHECK(p.targets == n - 1);
      CHECK(p.bits_per_byte == Approx(expected).epsilon(1e-5));
    }
  }
  // A sharpened model is far from uniform: the measurement sees the model.
  CHECK(std::abs(bits_per_byte(model, bytes, T).bits_per_byte - 8.0) > 0.5);
}

TEST_CASE("a model with all parameters zero has uniform logits: exactly 8 bits per byte") {
  for (PositionEncoding pos : {PositionEncoding::Rope, PositionEncoding::Learned}) {
    for (bool rewired : {false, true}) {
      Generator g(13);
      GPT model(tiny(pos, rewired), g);
      zero_model(model);
      const std::vector<uint8_t> bytes = random_bytes(70, 14);
      const EvalCurvePoint p = bits_per_byte(model, bytes, 16, 5, 0, 4);
      CHECK(p.available);
      CHECK(p.targets == 69);
      CHECK(p.bits_per_byte == Approx(8.0).epsilon(1e-6));
    }
  }
}

TEST_CASE("max_windows keeps that many windows, evenly spread, and scores only theirs") {
  Generator g(15);
  GPT model(tiny(), g);
  sharpen(model, 20.0);
  const int64_t n = 200, T = 8;
  const std::vector<uint8_t> bytes = random_bytes(n, 16);
  const auto all = sequential_windows(n, T);
  REQUIRE(all.size() == 25);  // 24 full windows and a tail
  const EvalCurvePoint p = bits_per_byte(model, bytes, T, 0, 5, 2);
  CHECK(p.windows == 5);
  CHECK(p.windows_total == 25);
  // floor(i * 25 / 5) = 0, 5, 10, 15, 20: full windows of 8 targets each.
  CHECK(p.targets == 40);
  const HandSum hand = hand_loss(model, bytes, T, {all[0], all[5], all[10], all[15], all[20]});
  CHECK(p.bits_per_byte == Approx(hand.nats / hand.count / std::log(2.0)).epsilon(1e-5));
  // Not more windows than there are; max_windows <= 0 keeps all.
  CHECK(bits_per_byte(model, bytes, T, 0, 100, 8).windows == 25);
  CHECK(bits_per_byte(model, bytes, T, 0, 0, 8).windows == 25);
  for (int64_t m : {1, 7, 24}) CHECK(bits_per_byte(model, bytes, T, 2, m, 8).windows == m);
}

TEST_CASE("learned positions past seq_len and too little data are reported not available") {
  Generator g(17);
  GPT model(tiny(PositionEncoding::Learned), g);
  const std::vector<uint8_t> bytes = random_bytes(100, 18);
  const EvalCurvePoint ok = bits_per_byte(model, bytes, 16);
  CHECK(ok.available);
  CHECK(ok.note.empty());
  const EvalCurvePoint past = bits_per_byte(model, bytes, 32);
  CHECK_FALSE(past.available);
  CHECK(past.T == 32);
  CHECK(past.windows == 0);
  CHECK_THAT(past.note, Contains("learned positions") && Contains("16"));
  // The suite's curve: every length reported, those past seq_len as not available.
  EvalSuiteOptions o;
  o.lengths = {8, 16, 32, 64};
  o.stride = 12;
  o.max_windows = 4;
  o.batch_size = 2;
  const nlohmann::json curve = suite(model, bytes, o).at("bits_per_byte").at("points");
  REQUIRE(curve.size() == 4);
  CHECK(curve[0].at("available") == true);
  CHECK(curve[0].at("stride") == 8);  // stride clamped to T
  CHECK(curve[1].at("available") == true);
  CHECK(curve[1].at("stride") == 12);
  CHECK(curve[2].at("available") == false);
  CHECK(curve[3].at("available") == false);
  // Rope extrapolates: the same length is fine there.
  Generator g2(17);
  GPT rope(tiny(PositionEncoding::Rope), g2);
  CHECK(bits_per_byte(rope, bytes, 32).available);
  const EvalCurvePoint short_data = bits_per_byte(rope, random_bytes(20, 1), 32);
  CHECK_FALSE(short_data.available);
  CHECK_THAT(short_data.note, Contains("20 bytes"));
  CHECK_THROWS_AS(bits_per_byte(rope, bytes, 8, 9), Error);
  CHECK_THROWS_AS(bits_per_byte(rope, bytes, 0), Error);
  CHECK_THROWS_AS(bits_per_byte(rope, bytes, 8, 0, 0, 0), Error);
}

TEST_CASE("passkey decoding matches unbatched greedy decoding by hand, counts add up, and it is seeded") {
  Generator g(19);
  GPT model(tiny(), g);
  sharpen(model, 20.0);
  const int64_t length = 110, trials = 4;
  const uint64_t seed = 5;
  const PasskeyCell cell = passkey_accuracy(model, length, 0.5, trials, seed);
  REQUIRE(cell.available);
  CHECK(cell.trials == trials);
  REQUIRE(cell.answers.size() == trials);
  REQUIRE(cell.predictions.size() == trials);

  Generator keys(seed);
  int64_t correct = 0, digits = 0;
  NoGradGuard guard;
  for (int64_t i = 0; i < trials; ++i) {
    const PasskeyExample ex = make_passkey(length, 0.5, keys);
    CHECK(cell.answers[i] == ex.answer);
    std::string text = ex.prompt, pred;
    for (int d = 0; d < 5; ++d) {
      std::vector<int64_t> ids(text.begin(), text.end());
      for (auto& x : ids) x = static_cast<uint8_t>(x);
      const int64_t T = static_cast<int64_t>(ids.size());
      const std::vector<double> logits = model.forward(Tensor::from_indices(ids, {1, T})).to_vector();
      const char next = static_cast<char>(argmax_row(logits, (T - 1) * 256, 256));
      pred.push_back(next);
      text.push_back(next);
    }
    CHECK(cell.predictions[i] == pred);
    correct += pred == ex.answer ? 1 : 0;
    for (int d = 0; d < 5; ++d) digits += pred[d] == ex.answer[d] ? 1 : 0;
  }
  CHECK(cell.correct == correct);
  CHECK(cell.digits_correct == digits);
  CHECK(cell.accuracy == Approx(static_cast<double>(correct) / trials));
  CHECK(cell.accuracy >= 0.0);
  CHECK(cell.accuracy <= 1.0);

  // Batching does not change anything; the same seed gives the same cell.
  const PasskeyCell one_by_one = passkey_accuracy(model, length, 0.5, trials, seed, 1);
  CHECK(one_by_one.predictions == cell.predictions);
  CHECK(one_by_one.correct == cell.correct);
  const PasskeyCell again = passkey_accuracy(model, length, 0.5, trials, seed, 3);
  CHECK(again.predictions == cell.predictions);
  CHECK(again.answers == cell.answers);
  // Another seed draws other keys.
  CHECK(passkey_accuracy(model, length, 0.5, trials, seed + 1).answers != cell.answers);
}

TEST_CASE("passkey: the zero model decodes byte 0 and scores 0, and a constant '7' model scores its 7s") {
  Generator g(21);
  GPT model(tiny(), g);
  zero_model(model);
  const PasskeyCell zero = passkey_accuracy(model, 120, 0.25, 6, 9);
  REQUIRE(zero.available);
  CHECK(zero.trials == 6);
  CHECK(zero.correct == 0);
  CHECK(zero.digits_correct == 0);
  CHECK(zero.accuracy == 0.0);
  for (const auto& p : zero.predictions) CHECK(p == std::string(5, '\0'));

  constant_seven_model(model);
  const int64_t trials = 40;
  const PasskeyCell seven = passkey_accuracy(model, 120, 1.0, trials, 9);
  int64_t sevens = 0;
  for (const auto& a : seven.answers) sevens += std::count(a.begin(), a.end(), '7');
  REQUIRE(sevens > 0);  // 200 random digits
  for (const auto& p : seven.predictions) CHECK(p == "77777");
  CHECK(seven.digits_correct == sevens);
  CHECK(seven.digit_accuracy == Approx(static_cast<double>(sevens) / (5.0 * trials)));
  CHECK(seven.correct == std::count(seven.answers.begin(), seven.answers.end(), std::string("77777")));
}

TEST_CASE("passkey grid is row-major over lengths x depths, and short or unreadable lengths are not available") {
  const std::vector<double>& depths = default_passkey_depths();
  CHECK(depths == std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0});
  Generator g(23);
  GPT learned(tiny(PositionEncoding::Learned), g);  // seq_len 16: no passkey document fits
  const PasskeyCell too_short = passkey_accuracy(learned, 50, 0.0, 2, 1);
  CHECK_FALSE(too_short.available);
  CHECK_THAT(too_short.note, Contains(std::to_string(passkey_min_length())));
  // The suite's grid: cell i * depths + j is (lengths[i], depths[j]).
  EvalSuiteOptions o;
  o.lengths = {8};
  o.passkey_trials = 2;
  o.passkey_lengths = {110, 120};
  o.seed = 1;
  const nlohmann::json cells = suite(learned, random_bytes(100, 22), o).at("passkey").at("cells");
  REQUIRE(cells.size() == 2 * depths.size());
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < depths.size(); ++j) {
      const nlohmann::json& c = cells[i * depths.size() + j];
      CHECK(c.at("length") == o.passkey_lengths[i]);
      CHECK(c.at("depth") == depths[j]);
      CHECK(c.at("available") == false);
      CHECK_THAT(c.at("note").get<std::string>(), Contains("learned positions"));
    }

  GPTConfig c = tiny(PositionEncoding::Learned);
  c.seq_len = 109;  // the last step reads length - 1 = 109 bytes
  Generator g2(24);
  GPT fits(c, g2);
  CHECK(passkey_accuracy(fits, 110, 0.5, 2, 1).available);
  CHECK_FALSE(passkey_accuracy(fits, 111, 0.5, 2, 1).available);
  CHECK_THROWS_AS(passkey_accuracy(fits, 110, 1.5, 2, 1), Error);
  CHECK_THROWS_AS(passkey_accuracy(fits, 110, 0.5, 0, 1), Error);
}

TEST_CASE("recall: teacher-forced accuracy matches a hand count, the zero model scores 0 and a constant model its 7s") {
  Generator g(25);
  GPT model(tiny(), g);
  sharpen(model, 20.0);
  const int64_t P = 5, Q = 3, trials = 3;
  const RecallResult r = recall_eval(model, P, Q, trials, 7);
  REQUIRE(r.available);
  CHECK(r.length == 6 * (P + Q));
  CHECK(r.scored == 2 * Q * trials);
  Generator gen(7);
  int64_t correct = 0;
  {
    NoGradGuard guard;
    for (int64_t i = 0; i < trials; ++i) {
      const RecallExample ex = make_recall(P, Q, gen);
      std::vector<int64_t> ids;
      for (size_t t = 0; t + 1 < ex.text.size(); ++t) ids.push_back(static_cast<uint8_t>(ex.text[t]));
      const int64_t T = static_cast<int64_t>(ids.size());
      const std::vector<double> logits = model.forward(Tensor::from_indices(ids, {1, T})).to_vector();
      for (int64_t p : ex.value_positions)
        correct += argmax_row(logits, (p - 1) * 256, 256) == static_cast<uint8_t>(ex.text[p]) ? 1 : 0;
    }
  }
  CHECK(r.correct == correct);
  CHECK(r.accuracy == Approx(static_cast<double>(correct) / r.scored));
  CHECK(recall_eval(model, P, Q, trials, 7, 1).correct == r.correct);

  zero_model(model);
  const RecallResult zero = recall_eval(model, P, Q, 4, 3);
  REQUIRE(zero.available);
  CHECK(zero.accuracy == 0.0);

  // Position check: a model predicting its current input byte gets exactly the second
  // value digits that equal their first digit (position p - 1 holds text[p - 1]).
  GPTConfig wide = tiny();
  wide.n_embd = 64;
  Generator gw(26);
  GPT echo(wide, gw);
  identity_model(echo);
  {
    NoGradGuard guard;
    std::vector<int64_t> all(256);
    for (int v = 0; v < 256; ++v) all[v] = v;
    const std::vector<double> logits = echo.forward(Tensor::from_indices(all, {1, 256})).to_vector();
    int64_t echoed = 0;
    for (int v = 0; v < 256; ++v) echoed += argmax_row(logits, v * 256, 256) == v ? 1 : 0;
    REQUIRE(echoed == 256);
  }
  Generator gen3(8);
  int64_t repeats = 0;
  for (int64_t i = 0; i < 50; ++i) {
    const RecallExample ex = make_recall(P, Q, gen3);
    for (int64_t p : ex.value_positions) repeats += ex.text[p - 1] == ex.text[p] ? 1 : 0;
  }
  REQUIRE(repeats > 0);
  CHECK(recall_eval(echo, P, Q, 50, 8, 7).correct == repeats);
  constant_seven_model(model);
  const int64_t many = 50;
  Generator gen2(3);
  int64_t sevens = 0;
  for (int64_t i = 0; i < many; ++i) {
    const RecallExample ex = make_recall(P, Q, gen2);
    for (int64_t p : ex.value_positions) sevens += ex.text[p] == '7' ? 1 : 0;
  }
  REQUIRE(sevens > 0);
  const RecallResult seven = recall_eval(model, P, Q, many, 3);
  CHECK(seven.correct == sevens);
}

TEST_CASE("recall past learned positions is not available, and default sizes fit L") {
  Generator g(27);
  GPT learned(tiny(PositionEncoding::Learned), g);  // seq_len 16
  CHECK(recall_eval(learned, 1, 1, 2, 1).available);  // 12 input bytes
  const RecallResult r = recall_eval(learned, 2, 1, 2, 1);  // 18 input bytes
  CHECK_FALSE(r.available);
  CHECK_THAT(r.note, Contains("learned positions"));
  CHECK_THROWS_AS(recall_eval(learned, 1, 2, 2, 1), Error);  // Q > P

  int64_t P = 0, Q = 0;
  default_recall_size(64, &P, &Q);
  CHECK(P == 6);
  CHECK(Q == 4);
  for (int64_t L : {12, 13, 64, 100, 128, 256, 1024, 100000}) {
    default_recall_size(L, &P, &Q);
    INFO("L " << L);
    CHECK(P >= 1);
    CHECK(Q >= 1);
    CHECK(Q <= P);
    CHECK(P <= 676);
    CHECK(recall_length(P, Q) - 1 <= L);
  }
}

TEST_CASE("eval json carries the numbers, or the note when not available") {
  EvalCurvePoint p;
  p.T = 64;
  p.stride = 64;
  p.bits_per_byte = 2.5;
  p.windows = 3;
  p.targets = 192;
  CHECK(to_json(p)["bits_per_byte"] == 2.5);
  CHECK(to_json(p)["targets"] == 192);
  p.available = false;
  p.note = "why";
  CHECK(to_json(p)["note"] == "why");
  CHECK_FALSE(to_json(p).contains("bits_per_byte"));
  PasskeyCell c;
  c.trials = 2;
  c.correct = 1;
  c.accuracy = 0.5;
  c.answers = {"12345", "00000"};
  c.predictions = {"12345", std::string("\xff\0\0\0\0", 5)};
  const auto j = to_json(c);
  CHECK(j["accuracy"] == 0.5);
  CHECK(j["prediction_bytes"][1][0] == 255);
  CHECK(j.dump().size() > 0);  // valid UTF-8 throughout
  RecallResult r;
  r.accuracy = 0.25;
  CHECK(to_json(r)["accuracy"] == 0.25);
}

namespace {
// Records the order of the suite's calls.
struct RecordingObserver : EvalSuiteObserver {
  std::vector<std::string> events;
  void starting(const std::string& what) override { events.push_back("start " + what); }
  void bits_per_byte_done(const EvalCurvePoint& p) override { events.push_back(fmt::format("bpb {}", p.T)); }
  void passkey_starting(const std::vector<int64_t>& lengths, const std::vector<int64_t>& skipped) override {
    events.push_back(fmt::format("passkey {} skipped {}", fmt::join(lengths, ","), fmt::join(skipped, ",")));
  }
  void passkey_done(const PasskeyCell& c, bool last) override {
    events.push_back(fmt::format("cell {} {:.2f}{}", c.length, c.depth, last ? " last" : ""));
  }
  void recall_done(const RecallResult& r) override { events.push_back(fmt::format("recall {} {}", r.num_pairs, r.num_queries)); }
};
}  // namespace

TEST_CASE("the evaluation suite: the single measurements in eval.json's layout, the observer told in order") {
  Generator g(31);
  TrainConfig config;
  config.model = tiny();
  config.model.seq_len = 64;
  config.val_fraction = 0.25;
  GPT model(config.model, g);
  const std::vector<uint8_t> val = random_bytes(400, 32);
  EvalSuiteOptions o;
  o.lengths = {16, 32};
  o.stride = 20;  // clamped to 16 at length 16
  o.max_windows = 3;
  o.batch_size = 2;
  o.passkey_trials = 2;
  o.passkey_lengths = {50, 110};  // 50 is below passkey_min_length()
  o.recall_trials = 3;
  o.recall_pairs = 5;
  o.seed = 9;
  RecordingObserver obs;
  const nlohmann::json j = run_eval_suite(model, config, "corpus.txt", val, Device::CPU, o, obs);

  // What it was measured on.
  CHECK(j.at("config") == config.to_json());
  CHECK(j.at("parameter_count") == model.parameter_count());
  CHECK(j.at("data") == "corpus.txt");
  CHECK(j.at("val_fraction") == 0.25);
  CHECK(j.at("val_bytes") == 400);
  CHECK(j.at("seed") == 9);
  CHECK(j.at("device") == "cpu");

  CHECK(j.at("bits_per_byte").at("points") ==
        nlohmann::json::array({to_json(bits_per_byte(model, val, 16, 16, 3, 2)), to_json(bits_per_byte(model, val, 32, 20, 3, 2))}));
  CHECK(j.at("bits_per_byte").at("stride") == 20);
  const auto& depths = default_passkey_depths();
  REQUIRE(j.at("passkey").at("cells").size() == depths.size());
  for (size_t d = 0; d < depths.size(); ++d)
    CHECK(j.at("passkey").at("cells")[d] == to_json(passkey_accuracy(model, 110, depths[d], 2, 9, 2)));
  CHECK(j.at("passkey").at("lengths") == nlohmann::json::array({110}));
  CHECK(j.at("passkey").at("skipped_lengths") == nlohmann::json::array({50}));
  // Recall: 5 pairs given; the default Q for L = 64 (4) kept, since it is <= 5.
  CHECK(j.at("recall") == to_json(recall_eval(model, 5, 4, 3, 9, 2)));

  std::vector<std::string> expected{"start bits per byte at length 16", "bpb 16", "start bits per byte at length 32",
                                    "bpb 32", "passkey 110 skipped 50"};
  for (size_t d = 0; d < depths.size(); ++d) {
    expected.push_back(fmt::format("start passkey, length 110, depth {:.0f}%", depths[d] * 100));
    expected.push_back(fmt::format("cell 110 {:.2f}{}", depths[d], d + 1 == depths.size() ? " last" : ""));
  }
  expected.push_back("start associative recall");
  expected.push_back("recall 5 4");
  CHECK(obs.events == expected);

  // Nothing asked, nothing measured: no passkey or recall sections.
  EvalSuiteOptions bare;
  bare.lengths = {16};
  RecordingObserver quiet;
  const nlohmann::json b = run_eval_suite(model, config, "corpus.txt", val, Device::CPU, bare, quiet);
  CHECK_FALSE(b.contains("passkey"));
  CHECK_FALSE(b.contains("recall"));
  CHECK(quiet.events.size() == 2);
}
