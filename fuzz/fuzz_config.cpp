// libFuzzer harness for the training config reader: JSON text -> TrainConfig
// (update_from_json, then validate), as `runway train --config FILE` and the checkpoint
// loader read config.json.
//
// Contract under test: any input is either rejected with a runway::Error (or, for text
// that is not JSON, nlohmann's parse error, which read_json_file turns into one), or it
// gives a config whose to_json() reads back into the same config. Anything else is a
// finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#if __has_include("nn/config.h")
#include "nn/config.h"
#else
#include "nn/train.h"
#endif
#include "fuzz/verbose.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using nlohmann::json;
  const json j = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    runway::fuzz::report("not JSON");
    return 0;
  }  // not JSON: the file reader's error, before any key is read
  runway::nn::TrainConfig config;
  try {
    config.update_from_json(j, "fuzz.json");
  } catch (const runway::Error& e) {
    runway::fuzz::report(e.what());
    return 0;
  }
  bool valid = true;
  try {
    config.validate();
  } catch (const runway::Error& e) {
    runway::fuzz::report((std::string("read, but invalid: ") + e.what()).c_str());
    valid = false;
  }
  // What a config writes (config.json of a run) it must read back unchanged.
  const json written = config.to_json();
  runway::nn::TrainConfig reread;
  try {
    reread.update_from_json(written, "fuzz.json (written back)");
  } catch (const runway::Error&) {
    std::abort();  // a config that cannot read its own output
  }
  if (reread.to_json() != written) std::abort();
  if (valid) runway::fuzz::report("accepted");
  return 0;
}
