// Modules with named parameters, the layers of a GPT, and the GPT itself.
//
// A Module owns its parameters (leaf tensors that require grad) and child modules,
// each under a name; named_parameters() walks them in registration order with
// dotted names ("blocks.0.attn.qkv.weight"), the names checkpoints use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace runway::nn {

struct NamedParameter {
  std::string name;
  Tensor tensor;
  bool decay;  // AdamW applies weight decay only to matmul weights (not biases, norms, embeddings)
};

class Module {
 public:
  virtual ~Module() = default;
  std::vector<NamedParameter> named_parameters() const;
  int64_t parameter_count() const;
  void zero_grad();

  // Moves every parameter (this module's and its children's) to `device`, in place:
  // each parameter keeps its TensorImpl and gets a new storage on the device, so every
  // handle to it (GPT::wte, Linear::weight, a NamedParameter list taken earlier) follows.
  // Values are copied exactly; accumulated gradients are dropped. An optimizer keeps its
  // own state tensors, so move the model before creating one. Throws runway::Error
  // (from backend_for) when the device has no backend; see parse_device in nn/device.h.
  void to(Device device);
  // The device of the parameters (CPU for a module without any). Throws when they are
  // spread over several devices, which to() never leaves behind.
  Device device() const;

 protected:
  // Returns a handle sharing the registered tensor.
  Tensor add_parameter(const std::string& name, Tensor init, bool decay);
  template <typename M>
  std::shared_ptr<M> add_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }

 private:
  void collect(const std::string& prefix, std::vector<NamedParameter>& out) const;
  std::vector<NamedParameter> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace runway::nn
