// A stand-in for libFuzzer's driver in builds without it (g++, CI): runs
// LLVMFuzzerTestOneInput once on every file under the folders (or files) given, so the
// seed corpora and saved regressions replay as a smoke test. A finding shows as a
// crash, an abort or an uncaught exception, which fails the test.
//
// usage: fuzz_<name>_replay PATH...   (prints the number of inputs run; exit 2 on misuse)
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PATH...  (files, or folders whose files are run)\n", argv[0]);
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    const fs::path root = argv[i];
    if (fs::is_regular_file(root, ec)) {
      inputs.push_back(root);
    } else if (fs::is_directory(root, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(root, ec))
        if (e.is_regular_file()) inputs.push_back(e.path());
    } else {
      std::fprintf(stderr, "%s: '%s' is neither a file nor a folder\n", argv[0], argv[i]);
      return 2;
    }
  }
  std::sort(inputs.begin(), inputs.end());  // a stable order, so a failure reproduces
  for (const fs::path& p : inputs) {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "%s: cannot read '%s'\n", argv[0], p.c_str());
      return 1;
    }
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "running %s (%zu bytes)\n", p.c_str(), bytes.size());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("%s: ran %zu inputs\n", argv[0], inputs.size());
  return 0;
}
