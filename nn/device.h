// Choosing the device a run uses (`--device cpu|cuda`).
//
// A device is a property of a run, not of a model: checkpoints always hold CPU tensors
// in the same safetensors format, so a model trained on one device loads on the other.
// Callers (apps, tests) must have called runway::load_backends() first, as apps/main.cpp
// does; it records why CUDA is unavailable, which the messages below repeat.
#pragma once

#include <string>
#include <vector>

#include "engine/dtype.h"

namespace runway::nn {

// The device names parse_device accepts, in order: "cpu", "cuda".
const std::vector<std::string>& device_names();

// "cpu" -> Device::CPU, "cuda" -> Device::CUDA, after checking that the device is
// usable in this process (require_device). Throws runway::Error:
//   unknown device 'banana': allowed values are cpu, cuda
//   device 'cuda' is not usable: no cuda backend: <why: no CUDA in this build, no
//   driver, no visible device, ...>
Device parse_device(const std::string& name);

// Throws runway::Error ("device 'cuda' is not usable: ...") unless `device` has a
// backend in this process. CPU always has one.
void require_device(Device device);

// A line for logs: "cpu", or "cuda (<GPU name, memory, compute capability>)".
std::string describe_device(Device device);

}  // namespace runway::nn
