// Tape-based reverse-mode autodiff.
//
// Every op that runs while grad mode is on and has an input that requires grad
// records a Node: its name, its inputs, and a backward function that maps the
// gradient of the output to gradients of the inputs. Nodes are numbered in the
// order they are recorded (their position on the tape). backward() collects the
// nodes reachable from the output and replays them in reverse tape order, so
// every node sees its complete output gradient before it runs.
//
// Un-broadcasting is done here, once: a backward may return a gradient of the
// broadcast output shape for an input that was broadcast, and the engine sums it
// back to the input's shape (sum_to). Anything that cannot be summed to the input
// shape, or has the wrong dtype, is an error naming the op.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace runway {

// The name of a differentiable op. Only declare_op can make one, and it lists the
// name in a registry, so tests can check that every op has an entry in the
// gradcheck table (engine/op_table.cpp): a new op cannot skip the check.
class OpName {
 public:
  const char* str() const { return name_; }
 private:
  explicit OpName(const char* name) : name_(name) {}
  const char* name_;
  friend OpName declare_op(const char* name);
};
OpName declare_op(const char* name);
const std::vector<std::string>& declared_ops();

// Gradients for each input, in input order; an undefined Tensor means "no gradient".
using Grads = std::vector<Tensor>;
using BackwardFn = std::function<Grads(const Tensor& grad_output)>;

struct Node {
  const char* name;
  uint64_t tape_position;
  std::vector<std::shared_ptr<TensorImpl>> inputs;  // hold the graph alive
  BackwardFn backward;
};

// Attaches a node to `output` when grad mode is on and any input requires grad.
// The backward function must not capture `output` itself (it would form a cycle);
// capture output.detach() instead. Returns `output`.
Tensor record(const OpName& op, Tensor output, const std::vector<Tensor>& inputs,
              BackwardFn backward);

bool grad_mode_enabled();

// Disables recording in its scope (inference, optimizer updates, backward itself).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;
 private:
  bool previous_;
};

// Runs reverse mode from `root` with upstream gradient `upstream` (same shape and
// dtype as root). Leaf tensors that require grad accumulate (+=) into .grad().
void run_backward(const Tensor& root, const Tensor& upstream);

// Sums `grad` over broadcast dimensions so it has `shape`; throws naming `op` when
// `grad` is not a broadcast of `shape`.
Tensor sum_to(const Tensor& grad, const Shape& shape, const char* op);

}  // namespace runway
