#include "nn/device.h"

#include <fmt/format.h>

#include "engine/backend.h"

namespace runway::nn {

const std::vector<std::string>& device_names() {
  static const std::vector<std::string> names{"cpu", "cuda"};
  return names;
}

void require_device(Device device) {
  if (backend_available(device)) return;
  std::string why;
  try {
    backend_for(device);  // throws, saying why there is no backend
    why = "no backend is registered";
  } catch (const std::exception& e) {
    why = e.what();
  }
  throw Error(fmt::format("device '{}' is not usable: {}", device_name(device), why));
}

Device parse_device(const std::string& name) {
  Device device;
  if (name == "cpu") device = Device::CPU;
  else if (name == "cuda") device = Device::CUDA;
  else throw Error(fmt::format("unknown device '{}': allowed values are {}", name, fmt::join(device_names(), ", ")));
  require_device(device);
  return device;
}

std::string describe_device(Device device) {
  if (device == Device::CPU) return "cpu";
  require_device(device);
  return backend_for(device).name();
}

}  // namespace runway::nn
