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
