#include "lab/study_set.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

namespace runway::lab {

namespace {

using nlohmann::json;

// An integer within [lo, hi]; anything else (a float, a string, out of range) is an error.
int64_t integer_in(const json& v, int64_t lo, int64_t hi, const std::string& where) {
  if (!v.is_number_integer())
    throw Error(fmt::format("{}: must be an integer, got {}", where, v.dump()));
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                        ? INT64_MAX
                        : v.get<int64_t>();
  if (x < lo || x > hi) throw Error(fmt::format("{}: must be in [{}, {}], got {}", where, lo, hi, v.dump()));
  return x;
}

std::vector<int64_t> integers_in(const json& v, int64_t lo, int64_t hi, const std::string& where) {
  if (!v.is_array() || v.empty()) throw Error(fmt::format("{}: must be a non-empty list of integers", where));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(integer_in(v[i], lo, hi, fmt::format("{}[{}]", where, i)));
  return out;
}

// A non-empty list of finite numbers in [lo, hi] (JSON integers included).
std::vector<double> numbers_in(const json& v, double lo, double hi, const std::string& where) {
  if (!v.is_array() || v.empty()) throw Error(fmt::format("{}: must be a non-empty list of numbers", where));
  std::vector<double> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number()) throw Error(fmt::format("{}[{}]: must be a number, got {}", where, i, v[i].dump()));
    const double x = v[i].get<double>();
    if (!(std::isfinite(x) && x >= lo && x <= hi))
      throw Error(fmt::format("{}[{}]: must be in [{}, {}], got {}", where, i, lo, hi, v[i].dump()));
    out.push_back(x);
  }
  return out;
}

void only_keys(const json& obj, const std::set<std::string>& allowed, const std::string& where) {
  if (!obj.is_object()) throw Error(fmt::format("{}: must be a JSON object", where));
  for (const auto& [key, value] : obj.items())
    if (!allowed.count(key)) {
      std::string names;
      for (const std::string& a : allowed) names += (names.empty() ? "" : ", ") + a;
      throw Error(fmt::format("{}: unknown key '{}' (allowed: {})", where, key, names));
    }
}

void read_eval(const json& e, const std::string& where, StudyOptions& o) {
  only_keys(e, {"lengths_in_L", "passkey_lengths_in_L", "max_windows", "passkey_trials", "recall_trials"}, where);
  if (e.contains("lengths_in_L")) o.eval_lengths_in_L = integers_in(e["lengths_in_L"], 1, 1 << 12, where + ".lengths_in_L");
  if (e.contains("passkey_lengths_in_L"))
    o.passkey_lengths_in_L = numbers_in(e["passkey_lengths_in_L"], 1, 1 << 12, where + ".passkey_lengths_in_L");
  if (e.contains("max_windows")) o.eval_max_windows = integer_in(e["max_windows"], 1, 1 << 30, where + ".max_windows");
  if (e.contains("passkey_trials")) o.passkey_trials = integer_in(e["passkey_trials"], 0, 1 << 30, where + ".passkey_trials");
  if (e.contains("recall_trials")) o.recall_trials = integer_in(e["recall_trials"], 0, 1 << 30, where + ".recall_trials");
}

}  // namespace

void read_study_set(const std::string& path, StudyOptions& o) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("--config-set: cannot read '{}'", path));
  const json set = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (set.is_discarded()) throw Error(fmt::format("--config-set: '{}' is not valid JSON", path));
  only_keys(set, {"title", "base", "configs", "seeds", "steps", "eval"}, path);
  nn::TrainConfig base;
  if (set.contains("base")) base.update_from_json(set["base"], path + ": base");
  if (!set.contains("configs") || !set["configs"].is_array() || set["configs"].empty())
    throw Error(fmt::format("{}: 'configs' must be a non-empty list of {{\"label\": ..., \"set\": {{...}}}}", path));
  o.configs.clear();
  for (size_t i = 0; i < set["configs"].size(); ++i) {
    const json& c = set["configs"][i];
    const std::string where = fmt::format("{}: configs[{}]", path, i);
    only_keys(c, {"label", "set"}, where);
    if (!c.contains("label") || !c["label"].is_string() || c["label"].get<std::string>().empty())
      throw Error(fmt::format("{}: needs a non-empty \"label\"", where));
    nn::TrainConfig config = base;
    if (c.contains("set")) config.update_from_json(c["set"], where + " (" + c["label"].get<std::string>() + ")");
    o.configs.push_back({c["label"].get<std::string>(), config});
  }
  if (set.contains("seeds")) {
    o.seeds.clear();
    for (int64_t s : integers_in(set["seeds"], 0, INT64_MAX, path + ": seeds")) o.seeds.push_back(static_cast<uint64_t>(s));
  }
  if (set.contains("steps")) o.steps = integer_in(set["steps"], 1, 1000000000000, path + ": steps");
  if (set.contains("eval")) read_eval(set["eval"], path + ": eval", o);
  if (set.contains("title")) {
    if (!set["title"].is_string()) throw Error(fmt::format("{}: title must be a string", path));
    o.title = set["title"].get<std::string>();
  }
}

}  // namespace runway::lab
