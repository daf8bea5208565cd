// The op table drives the gradient checks: every declared op has an entry, every
// entry's samples pass in float64, and per-op tolerances come with a reason.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/op_table.h"
#include "engine/ops.h"

using namespace runway;

TEST_CASE("every declared op has a row in the gradcheck table") {
  // Touch one op so ops.cpp's declarations are linked and registered.
  (void)add(Tensor::zeros({1}), Tensor::zeros({1}));
  const auto& declared = declared_ops();
  REQUIRE(declared.size() >= 30);
  for (const auto& name : declared) {
    INFO("op '" << name << "' was declared with declare_op but has no entry in engine/op_table.cpp");
    const OpEntry* e = find_op(name);
    CHECK(e != nullptr);
    if (e) CHECK_FALSE(e->composite);
  }
}

TEST_CASE("table entries are well-formed") {
  std::vector<std::string> names;
  for (const auto& e : op_table()) {
    INFO(e.name);
    CHECK(std::find(names.begin(), names.end(), e.name) == names.end());
    names.push_back(e.name);
    CHECK_FALSE(e.summary.empty());
    CHECK_FALSE(e.samples().empty());
    const bool default_tolerance = e.atol == GradcheckOptions{}.atol && e.rtol == GradcheckOptions{}.rtol;
    if (!default_tolerance) CHECK_FALSE(e.tolerance_reason.empty());
  }
}

TEST_CASE("every op with a threaded CPU kernel has a sample at a size that takes it") {
  // The threaded paths start at 2^14 elements (row kernels) and go up to 2^16 (binary
  // ops, strided copies) or a gemm work m n k of 2^18; the inputs' total size is the
  // proxy checked here (engine/op_table.cpp's threaded() sizes each sample for its
  // kernel's own threshold). The ops listed here run plain loops at any size.
  const std::vector<std::string> unthreaded{"embedding", "causal_mask"};
  for (const auto& e : op_table()) {
    if (std::find(unthreaded.begin(), unthreaded.end(), e.name) != unthreaded.end()) continue;
    INFO(e.name << " has no sample above the threading threshold (see threaded() in engine/op_table.cpp)");
    bool found = false;
    for (const auto& s : e.samples()) {
      int64_t total = 0;
      for (const auto& x : s.inputs) total += x.numel();
      found = found || (s.fast && total > (1 << 14));
    }
    CHECK(found);
  }
}

TEST_CASE("every op's backward matches central finite differences (float64)") {
  for (const auto& e : op_table()) {
    for (const auto& s : e.samples()) {
      INFO(e.name << " / " << s.label);
      const GradcheckResult r = gradcheck(sample_fn(e, s), s.inputs, sample_options(e, s), s.wrt);
      for (const auto& f : r.failures) INFO(f);
      for (const auto& in : r.inputs) {
        INFO("input " << in.input_index << ": max abs err " << in.max_abs_err << ", max rel err " << in.max_rel_err);
        CHECK(in.passed);
      }
      CHECK(r.failures.empty());
      CHECK(r.passed);
    }
  }
}

// docs/architecture.md maps every op to the files that hold it (forward, backward, formula,
// table row and CPU kernel; CUDA kernel). The map must cover the whole table and stay true.
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The rows "| `op` | kind | `file`, `file` | `file` |" of the map: op -> files named.
std::map<std::string, std::vector<std::string>> architecture_rows(const std::string& doc) {
  std::map<std::string, std::vector<std::string>> rows;
  std::istringstream lines(doc);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> quoted;
    for (size_t open = line.find('`'); open != std::string::npos; open = line.find('`', open + 1)) {
      const size_t close = line.find('`', open + 1);
      if (close == std::string::npos) break;
      quoted.push_back(line.substr(open + 1, close - open - 1));
      open = close;
    }
    if (quoted.empty() || quoted[0].find('/') != std::string::npos) continue;  // the folders table
    std::vector<std::string> files;
    for (size_t i = 1; i < quoted.size(); ++i)
      if (quoted[i].find('/') != std::string::npos) files.push_back(quoted[i]);
    rows[quoted[0]] = files;
  }
  return rows;
}

bool is_header(const std::string& path) {
  for (const char* ext : {".h", ".cuh"})
    if (path.size() > std::strlen(ext) && path.compare(path.size() - std::strlen(ext), std::string::npos, ext) == 0)
      return true;
  return false;
}

}  // namespace

TEST_CASE("docs/architecture.md maps every op of the table to files that hold it") {
  const std::string source_dir = RUNWAY_SOURCE_DIR;
  const std::string doc = read_text(source_dir + "/docs/architecture.md");
  REQUIRE_FALSE(doc.empty());
  const auto rows = architecture_rows(doc);
  for (const OpEntry& e : op_table()) {
    const auto row = rows.find(e.name);
    if (row == rows.end()) {
      FAIL_CHECK("op '" << e.name << "' (runway gradcheck --list) has no row in docs/architecture.md's map");
      continue;
    }
    INFO("op '" << e.name << "'");
    CHECK_FALSE(row->second.empty());
    int sources = 0;
    for (const std::string& file : row->second) {
      INFO("docs/architecture.md names " << file << " for '" << e.name << "'");
      const std::string text = read_text(source_dir + "/" + file);
      CHECK_FALSE(text.empty());
      CHECK(lower(text).find(lower(e.name)) != std::string::npos);
      // A tuned CPU kernel beside its loop-level reference (engine/ops/<family>_cpu_*.cpp:
      // attention_cpu_fast, attention_cpu_blockwise) does not count.
      if (!is_header(file) && file.find("_cpu_") == std::string::npos) ++sources;
    }
    INFO("'" << e.name << "' is spread over " << sources << " source files (at most 2: its family's engine file and CUDA file)");
    CHECK(sources <= 2);
  }
  for (const auto& [name, files] : rows) {
    INFO("docs/architecture.md has a row for '" << name << "', which is not in the op table");
    CHECK(find_op(name) != nullptr);
  }
}
