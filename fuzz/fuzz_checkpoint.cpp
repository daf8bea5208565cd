// libFuzzer harness for the whole checkpoint loader, nn::load_model(dir): the input is
// split into the files of a run folder (checkpoint_input.h: config.json, the weights and
// optionally a checkpoint manifest), which are written into a private folder on tmpfs
// and loaded.
//
// Contract under test: load_model either returns a model or throws a runway::Error.
// Anything else (another exception such as std::bad_alloc, a crash, a sanitizer report,
// a leak, a hang) is a finding.
//
// One bound is the harness's own: a config asking for a model larger than kMaxWidth,
// kMaxLayers, kMaxSeqLen is skipped, because load_model builds (and initialises) the
// model from config.json before it looks at model.safetensors, so a 100-byte config
// can make it allocate any amount of memory (a finding; see fuzz/README.md, and
// RUNWAY_FUZZ_UNCAPPED=1 to lift the bound).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "fuzz/checkpoint_input.h"
#include "nn/train.h"
#include "fuzz/verbose.h"

namespace {

constexpr double kMaxWidth = 64;     // n_embd, n_head
constexpr double kMaxLayers = 4;     // n_layer
constexpr double kMaxSeqLen = 1024;  // seq_len (learned positions allocate seq_len rows)

// True when config.json names a model too large to build per execution.
bool config_too_large(std::string_view text) {
  const nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  for (const auto& [key, cap] : {std::pair{"n_embd", kMaxWidth}, {"n_head", kMaxWidth}, {"n_layer", kMaxLayers},
                                 {"seq_len", kMaxSeqLen}}) {
    const auto it = j.find(key);
    if (it != j.end() && it->is_number() && it->get<double>() > cap) return true;
  }
  return false;
}

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
  static const bool uncapped = std::getenv("RUNWAY_FUZZ_UNCAPPED") != nullptr;  // to reproduce the finding
  if (!uncapped && !parts.empty() && config_too_large(parts[0])) {
    runway::fuzz::report("skipped: the config asks for a model over the harness's bounds");
    return 0;
  }
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
