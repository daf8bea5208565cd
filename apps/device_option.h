// The --device flag of the commands that run a model (train, eval, generate, and any
// command added later): add_device_option() on the subcommand, device_from_option() in
// its callback. The check happens in the callback, so a bad value is reported like every
// other input error of the command ("runway: error: --device: ...", exit code 1), and a
// missing GPU is named with the reason load_backends() recorded.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "engine/dtype.h"
#include "nn/device.h"

namespace runway::apps {

// Adds `--device NAME` to `cmd`, storing the name in *name (left as it is, e.g. "cpu",
// when the flag is not given).
inline CLI::Option* add_device_option(CLI::App* cmd, std::string* name) {
  return cmd
      ->add_option("--device", *name,
                   "Where to compute: cpu or cuda (cuda needs a build with CUDA and a visible GPU); "
                   "checkpoints are the same on both")
      ->capture_default_str();
}

// The device named by the flag; throws runway::Error prefixed with "--device: " when the
// name is unknown (listing cpu, cuda) or the device is not usable (saying why).
inline Device device_from_option(const std::string& name) {
  try {
    return nn::parse_device(name);
  } catch (const Error& e) {
    throw Error(std::string("--device: ") + e.what());
  }
}

}  // namespace runway::apps
