// libFuzzer harness for the whole checkpoint loader, nn::load_model(dir): the input is
// split into the files of a run folder (checkpoint_input.h: config.json, the weights and
// optionally a checkpoint manifest), which are written into a private folder on tmpfs
// and loaded.
//
// Contract under test: load_model either returns a model or throws a runway::Error.
// Anything else (another exception such as std::bad_alloc, a crash, a sanitizer report,
// a leak, a hang) is a finding.
//
// No bound on the config: load_model compares the parameter count config.json describes
// with the values model.safetensors holds before it allocates the model, so the model
// it builds is never larger than the input (regressions/checkpoint holds the input that
// once made it allocate hundreds of GB).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include "fuzz/checkpoint_input.h"
#include "nn/train.h"
#include "fuzz/verbose.h"

namespace {

// A private folder on tmpfs, emptied before each input and removed at exit.
struct RunFolder {
  std::string path;
  RunFolder() {
    std::error_code ec;
    const std::string base = std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm" : "/tmp";
    path = base + "/runway-fuzz-checkpoint-" + std::to_string(::getpid());
  }
  void reset() const {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~RunFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

void write_file(const std::string& path, std::string_view bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();  // the harness's own failure, not a finding in the loader
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static RunFolder folder;
  const auto parts = runway::fuzz::split_checkpoint_input(
      std::string_view(reinterpret_cast<const char*>(data), size));
  folder.reset();
  const bool step_layout = parts.size() >= 3;
  const std::string weights_dir =
      step_layout ? folder.path + "/" + std::string(runway::fuzz::kStepFolder) : folder.path;
  if (step_layout) std::filesystem::create_directories(weights_dir);
  if (parts.size() >= 1) write_file(folder.path + "/config.json", parts[0]);
  if (parts.size() >= 2) write_file(weights_dir + "/model.safetensors", parts[1]);
  if (parts.size() >= 3) write_file(weights_dir + "/manifest.json", parts[2]);
  try {
    runway::nn::TrainConfig config;
    const auto model = runway::nn::load_model(folder.path, &config);
    if (!model) std::abort();
    runway::fuzz::report("accepted");
  } catch (const runway::Error& e) {
    runway::fuzz::report(e.what());
  }
  return 0;
}
