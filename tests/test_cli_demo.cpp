// `runway compare`, `runway demo` and `runway inspect` end to end through the built CLI:
// the report and the inspect pages exist and every file they refer to is there, the
// numbers in results.json come from the runs, and bad input is refused before any work.
#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using runway::testing::check_html_references;
using runway::testing::slurp;

namespace {

int run(const std::string& args, const std::string& log) {
  const int status = std::system(fmt::format("{} {} > {} 2>&1", RUNWAY_CLI_PATH, args, log).c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct Setup {
  runway::testing::TempDir tmp;  // removed with everything in it at scope exit
  std::string dir = tmp.path;
  Setup() {
    fs::create_directories(dir + "/corpus");
    std::string text;
    for (int i = 0; i < 1500; ++i) text += fmt::format("Line {}: the runway carries what was read before.\n", i);
    std::ofstream(dir + "/corpus/a.txt") << text;
    // A tiny model; L = 64 so that the passkey grid has its 2L = 128 row.
    const json tiny{{"n_layer", 2}, {"n_head", 2}, {"n_embd", 16}, {"seq_len", 64}, {"batch_size", 4},
                    {"eval_batches", 1}, {"data", dir + "/corpus"}};
    json rewired = tiny;
    rewired["attention"] = "rewired";
    rewired["runway_summary"] = "two_hop";
    std::ofstream(dir + "/std.json") << tiny.dump();
    std::ofstream(dir + "/rew.json") << rewired.dump();
  }
};

}  // namespace

static int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_CASE("compare: two configs x two seeds give one report whose references all exist") {
  Setup s;
  const std::string out = s.dir + "/cmp";
  REQUIRE(run(fmt::format("compare --config {0}/std.json --config {0}/rew.json --label standard --label 'two hop' "
                          "--seeds 1,2 --steps 4 --out {1} --device cpu",
                          s.dir, out),
              s.dir + "/compare.log") == 0);
  const std::string log = slurp(s.dir + "/compare.log");
  INFO(log);
  CHECK(log.find("report: ") != std::string::npos);
  CHECK(log.find("two hop") != std::string::npos);  // the table is printed

  // Every picture and link of the report and of each inspect page is there.
  CHECK(check_html_references(out + "/report.html") >= 3 + 2 + 2 * 2 + 2);
  // Per inspect page: each layer's P and R and each head's A (and A', A' - A when
  // rewired), plus cascade.svg: 2 x (2 + 2) + 1 standard, 2 x (2 + 2 x 3) + 1 rewired.
  for (const auto& [run_dir, pictures] : std::vector<std::pair<std::string, size_t>>{
           {"standard-seed1", 9}, {"standard-seed2", 9}, {"two-hop-seed1", 17}, {"two-hop-seed2", 17}}) {
    INFO(run_dir);
    REQUIRE(fs::exists(out + "/runs/" + run_dir + "/eval.json"));
    CHECK(check_html_references(out + "/runs/" + run_dir + "/inspect/index.html") == pictures);
  }

  // results.json: both configs, two seeds each, the spread over seeds and the curve.
  const json results = json::parse(slurp(out + "/results.json"));
  REQUIRE(results["configs"].size() == 2);
  const json& rew = results["configs"][1];
  CHECK(rew["label"] == "two hop");
  CHECK(rew["seeds"] == 2);
  CHECK(rew["config"]["runway_summary"] == "two_hop");
  CHECK(rew["bits_per_byte"].size() == 4);
  CHECK(rew["runway_share_by_layer"].size() == 2);
  // The two seeds trained different models, so their final losses differ (sd > 0), and
  // the mean is the mean of the two runs' own last validation losses.
  CHECK(rew["final_val_bits_per_byte"]["sd"].get<double>() > 0);
  double sum = 0;
  for (const char* run_dir : {"two-hop-seed1", "two-hop-seed2"}) {
    std::ifstream metrics(out + "/runs/" + run_dir + "/metrics.jsonl");
    std::string line, last_val;
    while (std::getline(metrics, line))
      if (line.find("val_loss") != std::string::npos) last_val = line;
    sum += json::parse(last_val)["val_loss"].get<double>() / std::log(2.0);
  }
  CHECK(rew["final_val_bits_per_byte"]["mean"].get<double>() == Approx(sum / 2).epsilon(1e-12));
  // Passkey at 2L = 128: per seed the mean over the depth cells of its eval.json, then
  // the mean and sample sd over the two seeds.
  std::vector<double> per_seed;
  for (const char* run_dir : {"two-hop-seed1", "two-hop-seed2"}) {
    const json ev = json::parse(slurp(out + "/runs/" + run_dir + "/eval.json"));
    double total = 0;
    int cells = 0;
    for (const json& c : ev["passkey"]["cells"])
      if (c["length"] == 128) total += c["accuracy"].get<double>(), ++cells;
    REQUIRE(cells == 5);
    per_seed.push_back(total / cells);
  }
  const json& pk128 = rew["passkey_accuracy_by_length"]["128"];
  CHECK(pk128["mean"].get<double>() == Approx((per_seed[0] + per_seed[1]) / 2).margin(1e-12));
  CHECK(pk128["sd"].get<double>() == Approx(std::fabs(per_seed[0] - per_seed[1]) / std::sqrt(2.0)).margin(1e-12));
  const std::string report = slurp(out + "/report.html");
  CHECK(report.find("±") != std::string::npos);  // spread shown with several seeds
  CHECK(report.find("Passkey retrieval") != std::string::npos);

  // Paired differences to the first configuration, recomputed from the runs' own files:
  // d_s = last validation bpb of "two hop" minus that of "standard" for seed s; with two
  // seeds the interval is mean -/+ t(1) sd / sqrt(2), t(1) = 12.706.
  auto last_val_bits = [&](const std::string& run_dir) {
    std::ifstream metrics(out + "/runs/" + run_dir + "/metrics.jsonl");
    std::string line, last_val;
    while (std::getline(metrics, line))
      if (line.find("val_loss") != std::string::npos) last_val = line;
    return json::parse(last_val)["val_loss"].get<double>() / std::log(2.0);
  };
  const double d1 = last_val_bits("two-hop-seed1") - last_val_bits("standard-seed1");
  const double d2 = last_val_bits("two-hop-seed2") - last_val_bits("standard-seed2");
  const double mean = (d1 + d2) / 2, sd = std::abs(d1 - d2) / std::sqrt(2.0);
  const json& paired = results["paired_differences"];
  REQUIRE(paired.size() == 1);
  CHECK(paired[0]["label"] == "two hop");
  CHECK(paired[0]["baseline"] == "standard");
  const json& val = paired[0]["measures"][0];
  CHECK(val["measure"] == "val bpb");
  CHECK(val["n"] == 2);
  CHECK(val["mean"].get<double>() == Approx(mean).epsilon(1e-12));
  CHECK(val["low"].get<double>() == Approx(mean - 12.706 * sd / std::sqrt(2.0)).epsilon(1e-9));
  CHECK(val["high"].get<double>() == Approx(mean + 12.706 * sd / std::sqrt(2.0)).epsilon(1e-9));
  CHECK(report.find("Paired differences to standard") != std::string::npos);
  CHECK(log.find("paired differences to standard") != std::string::npos);

  // The same command again reuses the four finished runs (nothing trained, eval.json
  // untouched); a run whose study_run.json is missing (interrupted before it finished)
  // is trained again, the others reused; --fresh trains everything.
  const std::string same = fmt::format("compare --config {0}/std.json --config {0}/rew.json --label standard "
                                       "--label 'two hop' --seeds 1,2 --steps 4 --out {1} --device cpu",
                                       s.dir, out);
  const auto eval_time = [&](const std::string& run_dir) {
    return fs::last_write_time(out + "/runs/" + run_dir + "/eval.json");
  };
  const auto before = eval_time("standard-seed1");
  REQUIRE(run(same, s.dir + "/resume.log") == 0);
  const std::string resumed = slurp(s.dir + "/resume.log");
  INFO(resumed);
  CHECK(count_of(resumed, "reusing finished run") == 4);
  CHECK(resumed.find("trained ") == std::string::npos);
  CHECK(eval_time("standard-seed1") == before);
  CHECK(json::parse(slurp(out + "/results.json"))["paired_differences"] == paired);
  fs::remove(out + "/runs/two-hop-seed2/study_run.json");
  REQUIRE(run(same, s.dir + "/resume2.log") == 0);
  const std::string resumed2 = slurp(s.dir + "/resume2.log");
  CHECK(count_of(resumed2, "reusing finished run") == 3);
  CHECK(resumed2.find("trained two hop (seed 2)") != std::string::npos);
  CHECK(fs::exists(out + "/runs/two-hop-seed2/study_run.json"));
  REQUIRE(run(same + " --fresh", s.dir + "/fresh.log") == 0);
  CHECK(count_of(slurp(s.dir + "/fresh.log"), "reusing finished run") == 0);
  CHECK(eval_time("standard-seed1") != before);

  // Running again replaces the runs instead of appending to their metrics.
  REQUIRE(run(fmt::format("compare --config {0}/std.json --seeds 1 --steps 2 --out {1}", s.dir, out),
              s.dir + "/again.log") == 0);
  std::ifstream metrics(out + "/runs/std-seed1/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  CHECK(lines == 2);
}

TEST_CASE("compare --config-set: one file gives the configurations, seeds, steps and evaluation lengths") {
  Setup s;
  const std::string out = s.dir + "/set";
  const json tiny = json::parse(slurp(s.dir + "/std.json"));
  const json set{{"title", "a tiny set"},
                 {"base", tiny},
                 {"configs", {{{"label", "standard"}, {"set", json::object()}},
                              {{"label", "absorption NoPE"}, {"set", {{"attention", "rewired"}, {"pos", "none"}}}}}},
                 {"seeds", {3}},
                 {"steps", 3},
                 {"eval", {{"lengths_in_L", {1, 2, 4}}, {"passkey_lengths_in_L", {1.75, 2}}, {"max_windows", 1},
                           {"passkey_trials", 1}, {"recall_trials", 0}}}};
  std::ofstream(s.dir + "/set.json") << set.dump();
  REQUIRE(run(fmt::format("compare --config-set {0}/set.json --out {1} --device cpu", s.dir, out), s.dir + "/set.log") == 0);
  INFO(slurp(s.dir + "/set.log"));
  const json results = json::parse(slurp(out + "/results.json"));
  REQUIRE(results["configs"].size() == 2);
  CHECK(results["configs"][1]["label"] == "absorption NoPE");
  CHECK(results["configs"][1]["config"]["pos"] == "none");
  CHECK(results["configs"][1]["config"]["seed"] == 3);
  CHECK(results["configs"][1]["config"]["steps"] == 3);
  std::vector<int64_t> lengths;
  for (const json& p : results["configs"][0]["bits_per_byte"]) lengths.push_back(p["T"].get<int64_t>());
  CHECK(lengths == std::vector<int64_t>{64, 128, 256});  // L = 64
  std::vector<std::string> passkey_lengths;  // round(k L) bytes, k = 1.75 and 2
  for (const auto& [T, accuracy] : results["configs"][0]["passkey_mean_accuracy_by_length"].items())
    passkey_lengths.push_back(T);
  CHECK(passkey_lengths == std::vector<std::string>{"112", "128"});
  CHECK(fs::exists(out + "/runs/absorption-NoPE-seed3/study_run.json"));
  CHECK(slurp(out + "/report.html").find("a tiny set") != std::string::npos);
  // --seeds and --steps on the command line override the file's.
  REQUIRE(run(fmt::format("compare --config-set {0}/set.json --seeds 4 --steps 2 --out {1}", s.dir, out),
              s.dir + "/set2.log") == 0);
  CHECK(json::parse(slurp(out + "/results.json"))["configs"][0]["config"]["steps"] == 2);
  CHECK(fs::exists(out + "/runs/standard-seed4/study_run.json"));
}

TEST_CASE("compare: without --steps the time budget sets the steps, the same for every run") {
  Setup s;
  const std::string out = s.dir + "/budget";
  REQUIRE(run(fmt::format("compare --config {0}/std.json --config {0}/rew.json --minutes 0.05 --eval-windows 2 "
                          "--passkey-trials 0 --recall-trials 0 --out {1}",
                          s.dir, out),
              s.dir + "/budget.log") == 0);
  const std::string log = slurp(s.dir + "/budget.log");
  INFO(log);
  const std::string said = "budget 0.05 min: ";
  const size_t at = log.find(said);
  REQUIRE(at != std::string::npos);
  const int64_t steps = std::stoll(log.substr(at + said.size()));
  CHECK(steps >= 10);  // the floor when the budget is tiny
  const json results = json::parse(slurp(out + "/results.json"));
  for (const json& c : results["configs"]) {
    std::ifstream metrics(out + "/" + c["runs"][0]["dir"].get<std::string>() + "/metrics.jsonl");
    int64_t lines = 0;
    for (std::string line; std::getline(metrics, line);) ++lines;
    CHECK(lines == steps);
  }
  CHECK_FALSE(fs::exists(out + "/runs/.timing"));  // the timing runs are not left behind
  // Passkey and recall skipped: the report says so instead of showing empty grids.
  CHECK(slurp(out + "/report.html").find("not evaluated") != std::string::npos);
}

TEST_CASE("demo: the standard vs rewired pair, then inspect on a checkpoint it trained") {
  Setup s;
  const std::string out = s.dir + "/demo";
  // The smallest evaluation: the demo's model is the real one, and this also runs under the sanitizers.
  REQUIRE(run(fmt::format("demo --steps 1 --eval-windows 1 --passkey-trials 1 --recall-trials 1 --out {} --data {}/corpus",
                          out, s.dir),
              s.dir + "/demo.log") == 0);
  INFO(slurp(s.dir + "/demo.log"));
  check_html_references(out + "/report.html");
  const json results = json::parse(slurp(out + "/results.json"));
  REQUIRE(results["configs"].size() == 2);
  CHECK(results["configs"][0]["config"]["attention"] == "standard");
  CHECK(results["configs"][1]["config"]["attention"] == "rewired");
  // Same shape, same parameter count, same seed.
  CHECK(results["configs"][0]["parameters"] == results["configs"][1]["parameters"]);
  CHECK(results["configs"][0]["config"]["seed"] == results["configs"][1]["config"]["seed"]);

  const std::string ckpt = out + "/runs/rewired-seed1";
  REQUIRE(run(fmt::format("inspect --checkpoint {} --text 'Hello, runway!' --out {}/ins", ckpt, s.dir),
              s.dir + "/inspect.log") == 0);
  CHECK(slurp(s.dir + "/inspect.log").find("layer 2:") != std::string::npos);
  CHECK(check_html_references(s.dir + "/ins/index.html") > 0);
  const json summary = json::parse(slurp(s.dir + "/ins/inspect.json"));
  CHECK(summary["length"] == 14);
  CHECK(summary["tokens"][6] == "_");  // the space after the comma
  REQUIRE(run(fmt::format("inspect --checkpoint {} --passkey 110 --depth 0.5 --out {}/pk --no-npy", ckpt, s.dir),
              s.dir + "/pk.log") == 0);
  CHECK(json::parse(slurp(s.dir + "/pk/inspect.json"))["length"] == 110);
  CHECK_FALSE(fs::exists(s.dir + "/pk/L0_P.npy"));
}

TEST_CASE("demo, compare and inspect refuse bad input with a message naming it") {
  Setup s;
  auto error_of = [&](const std::string& args) {
    const int code = run(args, s.dir + "/err.log");
    CHECK(code != 0);
    return slurp(s.dir + "/err.log");
  };
  CHECK_THAT(error_of(fmt::format("compare --config {}/missing.json --steps 1 --out {}/x", s.dir, s.dir)),
             Catch::Contains("cannot read") && Catch::Contains("missing.json"));
  CHECK_THAT(error_of(fmt::format("compare --config {0}/std.json --label a --label b --out {0}/x", s.dir)),
             Catch::Contains("2 labels for 1 --config files"));
  CHECK_THAT(error_of(fmt::format("compare --config {0}/std.json --seeds 3,3 --out {0}/x", s.dir)),
             Catch::Contains("seed is listed twice"));
  CHECK_THAT(error_of(fmt::format("compare --config {0}/std.json --config {0}/std.json --out {0}/x", s.dir)),
             Catch::Contains("label 'std' is used twice"));
  CHECK_THAT(error_of(fmt::format("demo --minutes 0 --out {}/x", s.dir)), Catch::Contains("--minutes must be in (0, 1000000], got 0"));
  CHECK_THAT(error_of(fmt::format("demo --device banana --out {}/x", s.dir)), Catch::Contains("--device"));
  std::ofstream(s.dir + "/bad.json") << R"({"n_layer": 2, "attention": "sideways"})";
  CHECK_THAT(error_of(fmt::format("compare --config {0}/bad.json --out {0}/x", s.dir)),
             Catch::Contains("attention"));
  // A folder in the way of a run folder is not deleted.
  fs::create_directories(s.dir + "/y/runs/std-seed1/precious");
  CHECK_THAT(error_of(fmt::format("compare --config {0}/std.json --steps 1 --out {0}/y", s.dir)),
             Catch::Contains("is not a run folder"));
  CHECK(fs::exists(s.dir + "/y/runs/std-seed1/precious"));
  CHECK_THAT(error_of(fmt::format("inspect --checkpoint {0}/nowhere", s.dir)), Catch::Contains("nowhere"));
  CHECK_THAT(error_of(fmt::format("inspect --checkpoint {0} --text a --file b", s.dir)),
             Catch::Contains("at most one of --text, --file and --passkey"));
}
