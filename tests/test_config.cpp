// The training config as data (nn/config.h): one table drives the JSON, the flags and
// the docs; values are strict (integers, finite floats, enum names, ranges), old
// config.json files load unchanged, memory estimates refuse impossible models, and input
// files that are not regular files are refused without blocking.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <thread>

#include "engine/file_io.h"
#include "engine/random.h"
#include "nn/config.h"
#include "nn/data.h"
#include "nn/decode.h"
#include "nn/gpt.h"
#include "nn/train.h"
#include "tests/test_support.h"

using namespace runway;
using namespace runway::nn;
using Catch::Matchers::Contains;
using nlohmann::json;
using runway::testing::TempDir;

namespace {

// A config.json written by `runway train` before the field table existed (commit
// 0125f29: --n-layer 1 --n-head 2 --n-embd 16 --seq-len 16 --batch-size 2
// --eval-batches 1 --attention rewired --rewired-layers 0 --runway-beta 0.5 --pos alibi).
const char* kOldConfigJson = R"({
  "attention": "rewired",
  "batch_size": 2,
  "beta1": 0.9,
  "beta2": 0.95,
  "data": "corpus.txt",
  "eval_batches": 1,
  "eval_every": 100,
  "grad_accum": 1,
  "grad_clip": 1.0,
  "log_every": 10,
  "lr": 0.003,
  "min_lr_ratio": 0.1,
  "mix_passkey": 0.0,
  "mix_recall": 0.0,
  "n_embd": 16,
  "n_head": 2,
  "n_layer": 1,
  "parameter_count": 7408,
  "pos": "alibi",
  "recall_pairs": 6,
  "recall_queries": 4,
  "rewired_layers": [
    0
  ],
  "rope_base": 10000.0,
  "runway_beta": 0.5,
  "runway_detach": false,
  "runway_head": 0,
  "runway_summary": "absorption",
  "seed": 1,
  "seq_len": 16,
  "steps": 1,
  "val_fraction": 0.1,
  "warmup": 30,
  "weight_decay": 0.1
})";

std::string update_error(const json& j) {
  TrainConfig c;
  try {
    c.update_from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

// Runs `body` in a child process and returns its exit status, or -1 when it has not
// finished within `seconds` (the child is then killed): a call that blocks fails the
// test instead of hanging it.
int run_in_child(const std::function<int()>& body, double seconds) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) std::_Exit(body());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t done = ::waitpid(child, &status, WNOHANG);
    if (done == child) return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  return -1;
}

}  // namespace

TEST_CASE("the field table covers exactly the keys of config.json, each with a flag, a default and help") {
  const json written = TrainConfig{}.to_json();
  std::set<std::string> table_keys, json_keys;
  for (const ConfigField& f : train_config_fields()) {
    INFO(f.key);
    CHECK(table_keys.insert(f.key).second);  // no key twice
    CHECK_FALSE(f.help.empty());
    CHECK(f.flag().rfind("--", 0) == 0);
    CHECK(f.flag().find('_') == std::string::npos);
    if (f.omitted_when_default)
      CHECK(written.count(f.key) == 0);
    else
      CHECK(f.default_value() == written.at(f.key));
    CHECK(find_config_field(f.key) == &f);
  }
  for (const auto& [key, value] : written.items()) json_keys.insert(key);
  std::set<std::string> omitted;
  for (const ConfigField& f : train_config_fields())
    if (f.omitted_when_default) omitted.insert(f.key);
  CHECK(omitted == std::set<std::string>{"attention_impl"});  // the only one: every other key is always written
  for (const std::string& key : omitted) json_keys.insert(key);
  CHECK(table_keys == json_keys);
  // Written once it differs from the default, and read back.
  TrainConfig blockwise;
  blockwise.model.attention_impl = AttentionImpl::Blockwise;
  CHECK(blockwise.to_json().at("attention_impl") == "blockwise");
  TrainConfig back;
  back.update_from_json(blockwise.to_json(), "test");
  CHECK(back.model.attention_impl == AttentionImpl::Blockwise);
  CHECK(find_config_field("n_layer")->flag() == "--n-layer");
  CHECK(find_config_field("rewired_layers")->default_text() == "all");
  CHECK(find_config_field("pos")->allowed_text() == "rope, none, learned, alibi");
  CHECK(find_config_field("n_layer")->allowed_text() == "in [1, 1024]");
  CHECK(find_config_field("val_fraction")->allowed_text() == "in (0, 1), finite");
  CHECK(find_config_field("nope") == nullptr);
}

TEST_CASE("a config.json written before the field table loads and is written back the same") {
  const json old = json::parse(kOldConfigJson);
  TrainConfig c;
  c.update_from_json(old, "old config.json");
  CHECK(c.model.n_layer == 1);
  CHECK(c.model.n_head == 2);
  CHECK(c.model.n_embd == 16);
  CHECK(c.model.pos == PositionEncoding::Alibi);
  CHECK(c.model.rewired);
  CHECK(c.model.rewired_layers == std::vector<int64_t>{0});
  CHECK(c.model.runway.beta == 0.5);
  CHECK(c.batch_size == 2);
  CHECK(c.steps == 1);
  CHECK(c.data == "corpus.txt");
  c.validate();
  json expected = old;
  expected.erase("parameter_count");  // informational: added by the trainer, not by the config
  CHECK(c.to_json() == expected);
  CHECK(c.to_json().dump(2) == expected.dump(2));  // the same text: keys, order, number formats
  // And the parameter count the old trainer wrote is the model's.
  Generator gen(1);
  CHECK(GPT(c.model, gen).parameter_count() == old.at("parameter_count").get<int64_t>());
}

TEST_CASE("config values are strict: integers, finite numbers, enum names and ranges, naming the key") {
  // Integers for integer fields: a float is refused even when it is whole.
  CHECK_THAT(update_error({{"n_layer", 2.0}}), Contains("cfg.json") && Contains("key 'n_layer' must be an integer, got 2.0"));
  CHECK_THAT(update_error({{"n_layer", 2.5}}), Contains("key 'n_layer' must be an integer, got 2.5"));
  CHECK_THAT(update_error({{"steps", "100"}}), Contains("key 'steps' has the wrong type") && Contains("\"100\""));
  CHECK_THAT(update_error({{"rewired_layers", json::array({0, 1.5})}}), Contains("key 'rewired_layers' must be a list of integers"));
  CHECK_THAT(update_error({{"rewired_layers", json::array({0, 5000})}}), Contains("key 'rewired_layers'") && Contains("5000"));
  // Ranges, with the value.
  CHECK_THAT(update_error({{"n_layer", 1000000}}), Contains("key 'n_layer' must be in [1, 1024], got 1000000"));
  CHECK_THAT(update_error({{"n_layer", 0}}), Contains("key 'n_layer' must be in [1, 1024], got 0"));
  CHECK_THAT(update_error({{"steps", std::numeric_limits<uint64_t>::max()}}), Contains("key 'steps' must be in"));
  CHECK_THAT(update_error({{"lr", -0.5}}), Contains("key 'lr' must be > 0, got -0.5"));
  CHECK_THAT(update_error({{"beta2", 1.0}}), Contains("key 'beta2' must be in [0, 1), got 1"));
  CHECK_THAT(update_error({{"val_fraction", 0}}), Contains("key 'val_fraction' must be in (0, 1), got 0"));
  CHECK_THAT(update_error({{"seed", -1}}), Contains("key 'seed' must be >= 0, got -1"));
  // Other types and names.
  CHECK_THAT(update_error({{"runway_detach", 1}}), Contains("key 'runway_detach' has the wrong type"));
  CHECK_THAT(update_error({{"pos", "sinusoidal"}}), Contains("'sinusoidal' is not allowed: allowed values are rope, none, learned, alibi"));
  CHECK_THAT(update_error({{"lr", "fast"}}), Contains("'lr'") && Contains("wrong type"));
  // What is accepted: the largest seed, a float field written as an integer.
  TrainConfig c;
  c.update_from_json({{"seed", std::numeric_limits<uint64_t>::max()}, {"lr", 1}, {"n_layer", 1024}}, "cfg.json");
  CHECK(c.seed == std::numeric_limits<uint64_t>::max());
  CHECK(c.lr == 1.0);
  CHECK(c.model.n_layer == 1024);
  // A value refused leaves the fields before it applied and the config readable: no
  // partial value of the refused field.
  TrainConfig d;
  CHECK_THROWS(d.update_from_json({{"n_embd", 2.5}}, "cfg.json"));
  CHECK(d.model.n_embd == TrainConfig{}.model.n_embd);
}

TEST_CASE("validate checks the table's ranges on a config built in code") {
  TrainConfig c;
  c.model.n_layer = 5000;
  CHECK_THROWS_WITH(c.validate(), Contains("n_layer must be in [1, 1024], got 5000"));
  c = TrainConfig{};
  c.lr = std::nan("");
  CHECK_THROWS_WITH(c.validate(), Contains("lr must be a finite number"));
  c = TrainConfig{};
  c.warmup = -1;
  CHECK_THROWS_WITH(c.validate(), Contains("warmup must be in [0, "));
  c = TrainConfig{};
  c.mix_recall = 0.5;
  c.recall_pairs = 2;
  c.recall_queries = 3;
  CHECK_THROWS_WITH(c.validate(), Contains("recall_queries must be at most recall_pairs"));
  TrainConfig{}.validate();  // the defaults are valid
}

TEST_CASE("the parameter count estimate is the model's, for every position encoding") {
  for (PositionEncoding pos : {PositionEncoding::Rope, PositionEncoding::Learned, PositionEncoding::Alibi}) {
    GPTConfig m;
    m.n_layer = 3;
    m.n_head = 2;
    m.n_embd = 12;
    m.seq_len = 10;
    m.pos = pos;
    Generator gen(1);
    INFO(position_encoding_name(pos));
    CHECK(model_parameter_count(m) == static_cast<uint64_t>(GPT(m, gen).parameter_count()));
  }
}

TEST_CASE("a model or batch larger than the machine's memory is refused before anything is allocated") {
  REQUIRE(physical_memory_bytes() > 0);
  TrainConfig huge;
  huge.model.n_layer = 1024;
  huge.model.n_embd = 65536;
  huge.model.n_head = 1024;
  // Parameters alone: 12 * 65536^2 * 1024 floats, about 200 TiB, with 3 more copies for
  // the gradient and the AdamW moments: beyond any machine.
  CHECK(training_memory_bytes(huge) > 4ull * 12 * 65536ull * 65536ull * 1024ull * 4);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(huge.validate(), Contains("needs at least") && Contains("TiB, more than this machine's") &&
                                         Contains("reduce n_layer"));
  TrainConfig long_batch;
  long_batch.model.seq_len = 1 << 20;
  long_batch.batch_size = 1 << 10;  // attention maps: 2^10 * 4 heads * 2^40 floats
  CHECK_THROWS_WITH(long_batch.validate(), Contains("more than this machine's"));
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 1.0);
  // The saturating arithmetic: a product past 2^64 does not wrap to something small.
  GPTConfig m;
  m.n_head = 1024;
  m.n_embd = 65536;
  CHECK(inference_memory_bytes(m, 1 << 20, 1 << 24) == std::numeric_limits<uint64_t>::max());
  m.rewired = true;
  m.runway.summary = RunwaySummary::TwoHop;
  CHECK(decoding_memory_bytes(m, 1 << 30) > physical_memory_bytes());
  CHECK_THROWS_WITH(check_fits_in_memory(decoding_memory_bytes(m, 1 << 30), "decoding", "generate fewer"),
                    Contains("decoding needs at least") && Contains("generate fewer"));
  CHECK_NOTHROW(check_fits_in_memory(1024, "a little", "-"));
}

TEST_CASE("a FIFO, a device or a folder is refused as an input file, without blocking") {
  TempDir dir;
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // In a child with a deadline: opening a FIFO that has no writer blocks unless refused.
  auto refuses = [](const std::function<void()>& read, const std::string& expected) {
    return [read, expected]() {
      try {
        read();
      } catch (const Error& e) {
        return std::string(e.what()).find(expected) != std::string::npos ? 0 : 3;
      }
      return 4;  // read without an error
    };
  };
  CHECK(run_in_child(refuses([&] { load_json_file(fifo); }, "is a FIFO (named pipe), not a regular file"), 10) == 0);
  CHECK(run_in_child(refuses([&] { TrainConfig c; c.update_from_file(fifo); }, "FIFO"), 10) == 0);
  CHECK(run_in_child(refuses([&] { read_regular_file(fifo, "test", "a file"); }, "'" + fifo + "': is a FIFO"), 10) == 0);
  CHECK(run_in_child(refuses([&] { load_corpus(fifo); }, "is not a regular file or a folder"), 10) == 0);
  CHECK(run_in_child(refuses([&] { read_regular_file("/dev/zero", "test", "a file"); }, "is a character device"), 10) == 0);
  CHECK(run_in_child(refuses([&] { load_corpus("/dev/zero"); }, "is not a regular file or a folder"), 10) == 0);
  CHECK_THROWS_WITH(load_json_file(dir.path), Contains("is a directory"));
  // A regular file still reads.
  runway::testing::write_bytes(dir / "c.json", R"({"n_layer": 3})");
  TrainConfig c;
  c.update_from_file(dir / "c.json");
  CHECK(c.model.n_layer == 3);
}

TEST_CASE("generate hands each byte to the callback as it is sampled, and returns the same bytes") {
  GPTConfig m;
  m.n_layer = 1;
  m.n_head = 2;
  m.n_embd = 8;
  m.seq_len = 16;
  Generator init(3);
  GPT model(m, init);
  Generator a(7), b(7);
  std::string streamed;
  const std::string returned = generate(model, "ab", 12, {0.9, 0}, a, [&](char ch) { streamed.push_back(ch); });
  CHECK(returned.size() == 12);
  CHECK(streamed == returned);
  CHECK(generate(model, "ab", 12, {0.9, 0}, b) == returned);  // the callback changes nothing
}

TEST_CASE("docs/usage.md holds the config table generated from the field table") {
  const std::string doc = runway::testing::read_bytes(std::string(RUNWAY_SOURCE_DIR) + "/docs/usage.md");
  const std::string begin = "<!-- config-table: generated from nn/config.cpp, checked by tests/test_config.cpp -->\n";
  const std::string end = "<!-- config-table end -->";
  const size_t b = doc.find(begin);
  REQUIRE(b != std::string::npos);
  const size_t e = doc.find(end, b);
  REQUIRE(e != std::string::npos);
  const std::string in_doc = doc.substr(b + begin.size(), e - b - begin.size());
  if (in_doc != config_fields_markdown()) {
    // The text to paste between the markers, as a file (a failure message wraps lines).
    const std::string path = std::filesystem::absolute("usage-config-table.md").string();
    runway::testing::write_bytes(path, config_fields_markdown());
    FAIL("docs/usage.md's config table differs from nn/config.cpp's fields; the table to paste between the "
         "markers is in " << path);
  }
}
