// How fuzz_checkpoint splits one fuzz input into the files of a run folder, shared with
// the seed generator (make_seeds.cpp).
//
// The input is the files' contents in the order of kCheckpointFiles, separated by
// kFileSeparator; missing trailing parts are missing files, extra parts are ignored. A
// separator (rather than length prefixes) keeps the parts apart when the fuzzer inserts
// or deletes bytes inside one of them.
//
// Two parts make a run folder of the flat layout (RUN/config.json, RUN/model.safetensors);
// with a third, the manifest, the weights and the manifest go into
// RUN/checkpoints/step-00000001/ (the layout of nn/checkpoint.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace runway::fuzz {

inline constexpr std::string_view kFileSeparator = "\n--runway-next-file--\n";
inline const std::vector<std::string> kCheckpointFiles = {"config.json", "model.safetensors", "manifest.json"};
inline constexpr std::string_view kStepFolder = "checkpoints/step-00000001";
inline constexpr int kStep = 1;

inline std::vector<std::string_view> split_checkpoint_input(std::string_view input) {
  std::vector<std::string_view> parts;
  while (parts.size() < kCheckpointFiles.size()) {
    const size_t at = input.find(kFileSeparator);
    parts.push_back(input.substr(0, at));
    if (at == std::string_view::npos) break;
    input.remove_prefix(at + kFileSeparator.size());
  }
  return parts;
}

inline std::string join_checkpoint_input(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? std::string(kFileSeparator) : "") + parts[i];
  return out;
}

}  // namespace runway::fuzz
