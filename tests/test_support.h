// Helpers shared by the tests.
#pragma once

#include <catch2/catch.hpp>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <string>
#include <system_error>
#include <vector>

namespace runway::testing {

// A fresh directory runway_test_XXXXXX in the temp folder ($TMPDIR, else /tmp), removed
// with everything in it at scope exit. CTest points TMPDIR at a folder of the build that
// the entry tmp_folder_left_empty checks afterwards (tests/CMakeLists.txt).
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "runway_test_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  // The names of the files in it, sorted (to check that no temporary file is left).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

// The bytes of a file (REQUIREs that it opens).
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The text of a file, or "" when it cannot be read (for logs that may be missing).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// The local files an HTML page refers to (src="..." and href="..."), skipping links to
// the web, anchors and mailto; relative to the page's folder, without duplicates.
inline std::vector<std::string> html_local_references(const std::string& html) {
  static const std::regex attr(R"re((?:src|href)="([^"]*)")re");
  std::set<std::string> refs;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), attr); it != std::sregex_iterator(); ++it) {
    const std::string target = (*it)[1].str();
    if (target.empty() || target[0] == '#' || target.rfind("http:", 0) == 0 || target.rfind("https:", 0) == 0 ||
        target.rfind("mailto:", 0) == 0)
      continue;
    refs.insert(target);
  }
  return std::vector<std::string>(refs.begin(), refs.end());
}

// Checks that every local file `page` refers to exists and is not empty; returns how
// many references there were.
inline size_t check_html_references(const std::string& page) {
  const std::string html = read_bytes(page);
  const std::filesystem::path dir = std::filesystem::path(page).parent_path();
  const std::vector<std::string> refs = html_local_references(html);
  for (const std::string& ref : refs) {
    INFO(page << " refers to " << ref);
    const std::filesystem::path file = dir / ref;
    REQUIRE(std::filesystem::is_regular_file(file));
    CHECK(std::filesystem::file_size(file) > 0);
  }
  return refs.size();
}

}  // namespace runway::testing
