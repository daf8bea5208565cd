// Training: reproducible from a seed, resume continues with exactly the losses of an
// uninterrupted run, corrupt checkpoints are refused, configs are validated.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "nn/train.h"
#include "tests/test_support.h"
#include "tests/train_test_support.h"

using namespace runway;
using namespace runway::nn;
using runway::testing::run_losses;
using Catch::Matchers::Contains;
using runway::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// A small corpus of two text files, so runs are fast and do not depend on fortunes.
std::string make_corpus(const std::string& dir) {
  fs::create_directories(dir + "/corpus");
  std::string a, b;
  for (int i = 0; i < 200; ++i) a += fmt::format("line {} of the first file: the quick brown fox.\n", i);
  for (int i = 0; i < 40; ++i) b += fmt::format("second file, entry {}: jumps over the lazy dog.\n", i);
  std::ofstream(dir + "/corpus/a.txt") << a;
  std::ofstream(dir + "/corpus/b.txt") << b;
  return dir + "/corpus";
}

TrainConfig tiny_config(const std::string& data) {
  TrainConfig c = runway::testing::tiny_train_config(data);
  c.steps = 8;
  c.warmup = 2;
  c.eval_every = 4;
  c.eval_batches = 2;
  c.grad_accum = 2;
  return c;
}

}  // namespace

TEST_CASE("the same seed and data give the same losses, bit for bit") {
  const TempDir tmp;
  const std::string& dir = tmp.path;
  const TrainConfig c = tiny_config(make_corpus(dir));
  Trainer a(c, dir + "/a", false), b(c, dir + "/b", false);
  const auto la = run_losses(a), lb = run_losses(b);
  REQUIRE(la.size() == 8);
  CHECK(la == lb);
  CHECK(la.back() < la.front());
}

TEST_CASE("resume continues with exactly the losses of an uninterrupted run") {
  const TempDir tmp;
  const std::string& dir = tmp.path;
  const TrainConfig c = tiny_config(make_corpus(dir));
  Trainer full(c, dir + "/full", false);
  const auto straight = run_losses(full);
  std::vector<double> pieced;
  {
    Trainer first(c, dir + "/pieced", false);
    pieced = run_losses(first, 3);  // interrupted after step 3: a checkpoint is saved
    REQUIRE(first.step() == 3);
  }
  Trainer second(TrainConfig{}, dir + "/pieced", true);  // the saved config wins
  CHECK(second.step() == 3);
  const auto rest = run_losses(second);
  pieced.insert(pieced.end(), rest.begin(), rest.end());
  CHECK(pieced == straight);
  // The metrics log holds every step once, in order.
  std::ifstream metrics(dir + "/pieced/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  CHECK(lines == 8);
}

TEST_CASE("a truncated or inconsistent checkpoint is refused with a clear message") {
  const TempDir tmp;
  const std::string& dir = tmp.path;
  const TrainConfig c = tiny_config(make_corpus(dir));
  {
    Trainer t(c, dir + "/run", false);
    run_losses(t);
  }
  // The run's only checkpoint (nn/checkpoint.h) is damaged: its manifest catches it.
  const std::string model = dir + "/run/checkpoints/step-00000008/model.safetensors";
  fs::resize_file(model, fs::file_size(model) - 10);
  CHECK_THROWS_WITH(Trainer(TrainConfig{}, dir + "/run", true), Contains("model.safetensors"));
  CHECK_THROWS_WITH(load_model(dir + "/run"), Contains("model.safetensors"));
  {
    Trainer t(c, dir + "/run2", false);
    run_losses(t);
  }
  // A state.json from another step: not the file the manifest vouches for.
  std::ofstream(dir + "/run2/checkpoints/step-00000008/state.json") << R"({"step": 5, "data_rng": ["0","0","0","1"], "data_rng_has_spare": false, "data_rng_spare_bits": "0"})";
  CHECK_THROWS_WITH(Trainer(TrainConfig{}, dir + "/run2", true), Contains("state.json") && Contains("the manifest says"));
  CHECK_THROWS_WITH(Trainer(TrainConfig{}, dir + "/missing", true), Contains("config.json"));
}

TEST_CASE("training configs are validated, naming the field") {
  TrainConfig c;
  CHECK_THROWS_WITH(c.update_from_json(nlohmann::json{{"n_layers", 2}}, "cfg.json"), Contains("unknown key 'n_layers'") && Contains("n_layer"));
  CHECK_THROWS_WITH(c.update_from_json(nlohmann::json{{"lr", "fast"}}, "cfg.json"), Contains("'lr'") && Contains("wrong type"));
  CHECK_THROWS_WITH(c.update_from_json(nlohmann::json{{"runway_summary", "three_hop"}}, "cfg.json"), Contains("absorption, two_hop"));
  CHECK_THROWS_WITH(c.update_from_json(nlohmann::json{{"attention", "sparse"}}, "cfg.json"), Contains("standard, rewired"));
  c = TrainConfig{};
  c.lr = 0;
  CHECK_THROWS_WITH(c.validate(), Contains("lr must be > 0"));
  c = TrainConfig{};
  c.batch_size = -1;
  CHECK_THROWS_WITH(c.validate(), Contains("batch_size"));
  // The JSON form round-trips.
  TrainConfig d = tiny_config("/x");
  TrainConfig e;
  e.update_from_json(d.to_json(), "round trip");
  CHECK(e.to_json() == d.to_json());
  const TempDir nodata;
  CHECK_THROWS_WITH(Trainer(tiny_config("/nonexistent/corpus"), nodata / "o", false), Contains("/nonexistent/corpus"));
}

TEST_CASE("task mixing is validated and changes the training batches") {
  const TempDir tmp;
  const std::string& dir = tmp.path;
  TrainConfig c = tiny_config(make_corpus(dir));
  c.mix_passkey = 0.5;
  CHECK_THROWS_WITH(c.validate(), Contains("mix_passkey needs seq_len >= 106"));
  c.mix_passkey = 0;
  c.mix_recall = 0.5;
  c.recall_pairs = 2;
  c.recall_queries = 1;  // 6 * 3 + 1 = 19 bytes > seq_len + 1 = 17
  CHECK_THROWS_WITH(c.validate(), Contains("longer than seq_len + 1 = 17"));
  c.model.seq_len = 24;
  c.validate();
  TrainConfig plain = c;
  plain.mix_recall = 0;
  Trainer mixed(c, dir + "/mixed", false), base(plain, dir + "/plain", false);
  CHECK(run_losses(mixed) != run_losses(base));
}
