#include "nn/module.h"

#include <fmt/format.h>

namespace runway::nn {

Tensor Module::add_parameter(const std::string& name, Tensor init, bool decay) {
  init.set_requires_grad(true);
  params_.push_back({name, init, decay});
  return params_.back().tensor;
}

void Module::collect(const std::string& prefix, std::vector<NamedParameter>& out) const {
  for (const auto& p : params_) out.push_back({prefix + p.name, p.tensor, p.decay});
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<NamedParameter> Module::named_parameters() const {
  std::vector<NamedParameter> out;
  collect("", out);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : named_parameters()) n += p.tensor.numel();
  return n;
}

void Module::zero_grad() {
  for (auto& p : named_parameters()) p.tensor.zero_grad();
}

void Module::to(Device device) {
  // Copy everything first, then swap the storages in: a failed copy (device out of
  // memory, no backend) leaves the module as it was, on its old device.
  const auto params = named_parameters();
  std::vector<Tensor> moved;
  moved.reserve(params.size());
  for (const auto& p : params) {
    if (!p.tensor.is_leaf())
      throw Error(fmt::format("Module::to: parameter '{}' is not a leaf tensor", p.name));
    moved.push_back(p.tensor.device() == device ? p.tensor : p.tensor.detach().to(device));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    TensorImpl* impl = params[i].tensor.impl();
    impl->grad = nullptr;
    if (moved[i].impl() == impl) continue;  // already there
    impl->storage = moved[i].impl()->storage;
    impl->strides = moved[i].strides();
    impl->offset = moved[i].offset();
  }
}

Device Module::device() const {
  const auto params = named_parameters();
  if (params.empty()) return Device::CPU;
  const Device d = params.front().tensor.device();
  for (const auto& p : params)
    if (p.tensor.device() != d)
      throw Error(fmt::format("module parameters are on several devices: '{}' on {}, '{}' on {}",
                              params.front().name, device_name(d), p.name, device_name(p.tensor.device())));
  return d;
}

}  // namespace runway::nn
