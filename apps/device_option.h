// The --device flag of the commands that run a model (train, eval, generate, and any
// command added later): add_device_option() on the subcommand, device_from_option() in
// its callback. A name other than cpu or cuda is a usage error when the flag is parsed
// ("runway: error: --device: unknown device ...", exit code 2); a known device that is
// not usable here is found in the callback and reported like every other runtime error
// (exit code 1), naming the reason load_backends() recorded.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "apps/parse.h"
#include "engine/dtype.h"
#include "nn/device.h"

namespace runway::apps {

// Adds `--device NAME` to `cmd`, storing the name in *name (left as it is, e.g. "cpu",
// when the flag is not given).
inline CLI::Option* add_device_option(CLI::App* cmd, std::string* name) {
  return cmd
      ->add_option_function<std::string>(
          "--device",
          [name](const std::string& text) {
            if (text != "cpu" && text != "cuda")
              throw UsageError("--device: unknown device '" + text + "': allowed values are cpu, cuda");
            *name = text;
          },
          "Where to compute: cpu or cuda (cuda needs a build with CUDA and a visible GPU); "
          "checkpoints are the same on both (default " + *name + ")")
      ->type_name("{cpu,cuda}");
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
