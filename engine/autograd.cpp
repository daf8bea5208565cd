#include "engine/autograd.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace runway {

// ---- op registry ----------------------------------------------------------------

namespace {
std::vector<std::string>& op_registry() {
  static std::vector<std::string> names;
  return names;
}
thread_local bool g_grad_mode = true;
std::atomic<uint64_t> g_tape_counter{0};
}  // namespace

OpName declare_op(const char* name) {
  auto& names = op_registry();
  if (std::find(names.begin(), names.end(), name) == names.end()) names.emplace_back(name);
  return OpName(name);
}

const std::vector<std::string>& declared_ops() { return op_registry(); }

// ---- grad mode ------------------------------------------------------------------------

bool grad_mode_enabled() { return g_grad_mode; }
NoGradGuard::NoGradGuard() : previous_(g_grad_mode) { g_grad_mode = false; }
NoGradGuard::~NoGradGuard() { g_grad_mode = previous_; }

// ---- recording ----------------------------------------------------------------------------

Tensor record(const OpName& op, Tensor output, const std::vector<Tensor>& inputs,
              BackwardFn backward) {
  if (!grad_mode_enabled()) return output;
  bool any = false;
  for (const auto& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return output;
  auto node = std::make_shared<Node>();
  node->name = op.str();
  node->tape_position = g_tape_counter.fetch_add(1);
  for (const auto& t : inputs) node->inputs.push_back(t.defined() ? t.impl_ptr() : nullptr);
  node->backward = std::move(backward);
  TensorImpl* impl = output.impl();
  impl->grad_fn = std::move(node);
  impl->requires_grad = true;
  return output;
}

// ---- un-broadcasting ----------------------------------------------------------------------

Tensor sum_to(const Tensor& grad, const Shape& shape, const char* op) {
  const Shape& gshape = grad.shape();
  if (gshape == shape) return grad;
  const int64_t lead = static_cast<int64_t>(gshape.size()) - static_cast<int64_t>(shape.size());
  bool ok = lead >= 0;
  std::vector<int64_t> reduce_dims;
  for (int64_t i = 0; ok && i < static_cast<int64_t>(gshape.size()); ++i) {
    if (i < lead) {
      reduce_dims.push_back(i);
    } else if (shape[i - lead] == 1 && gshape[i] != 1) {
      reduce_dims.push_back(i);
    } else if (shape[i - lead] != gshape[i]) {
      ok = false;
    }
  }
  if (!ok)
    throw Error(fmt::format("{} backward: gradient of shape {} cannot be summed to input shape {}",
                            op, shape_to_string(gshape), shape_to_string(shape)));
  Tensor reduced = sum(grad, reduce_dims, /*keepdim=*/true);
  return reshape(reduced, shape);
}

// ---- the backward pass --------------------------------------------------------------------

namespace {

void check_grad(const Tensor& g, const TensorImpl& input, const char* op, size_t index) {
  if (g.dtype() != input.dtype)
    throw Error(fmt::format("{} backward: gradient for input {} has dtype {}, input is {}", op,
                            index, dtype_name(g.dtype()), dtype_name(input.dtype)));
  if (g.device() != input.storage->device)
    throw Error(fmt::format("{} backward: gradient for input {} is on {}, input is on {}", op,
                            index, device_name(g.device()), device_name(input.storage->device)));
}

void accumulate(std::shared_ptr<TensorImpl>& slot, const Tensor& g) {
  if (!slot) {
    // Tensors are never written in place, so sharing g's buffer is safe; detach
    // gives the gradient its own identity without history.
    slot = g.detach().impl_ptr();
  } else {
    slot = add(Tensor(slot), g).impl_ptr();
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& upstream) {
  if (!root.requires_grad())
    throw Error("backward: the tensor does not require grad (no input of its graph requires grad)");
  if (upstream.shape() != root.shape() || upstream.dtype() != root.dtype() ||
      upstream.device() != root.device())
    throw Error(fmt::format("backward: upstream gradient {} {} does not match the output {} {}",
                            upstream.shape_str(), dtype_name(upstream.dtype()), root.shape_str(),
                            dtype_name(root.dtype())));
  NoGradGuard no_grad;
  TensorImpl* root_impl = root.impl();
  if (!root_impl->grad_fn) {  // a leaf: its gradient is the upstream itself
    std::shared_ptr<TensorImpl> slot = root_impl->grad;
    accumulate(slot, upstream);
    root_impl->grad = slot;
    return;
  }

  // Collect the nodes reachable from the root; replay them in reverse tape order.
  std::vector<Node*> nodes;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack{root_impl->grad_fn.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    nodes.push_back(n);
    for (const auto& in : n->inputs)
      if (in && in->grad_fn) stack.push_back(in->grad_fn.get());
  }
  std::sort(nodes.begin(), nodes.end(),
            [](const Node* a, const Node* b) { return a->tape_position > b->tape_position; });

  std::unordered_map<Node*, std::shared_ptr<TensorImpl>> pending;  // output grads
  pending[root_impl->grad_fn.get()] = upstream.detach().impl_ptr();
  for (Node* node : nodes) {
    auto it = pending.find(node);
    if (it == pending.end()) continue;  // no gradient reached this node
    Tensor grad_out(it->second);
    pending.erase(it);
    Grads grads = node->backward(grad_out);
    if (grads.size() != node->inputs.size())
      throw Error(fmt::format("{} backward returned {} gradients for {} inputs", node->name,
                              grads.size(), node->inputs.size()));
    for (size_t i = 0; i < grads.size(); ++i) {
      const auto& input = node->inputs[i];
      if (!input || !input->requires_grad || !grads[i].defined()) continue;
      Tensor g = sum_to(grads[i], input->shape, node->name);  // exact shape, or throws
      check_grad(g, *input, node->name, i);
      if (input->grad_fn) {
        accumulate(pending[input->grad_fn.get()], g);
      } else {
        accumulate(input->grad, g);
      }
    }
  }
}

}  // namespace runway
