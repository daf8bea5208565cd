// Internal to the op families (engine/ops/*.cpp): the validation, view and dispatch
// helpers that several families share. Defined in engine/ops.cpp. Not part of the
// engine's public interface: callers use engine/ops.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace runway::op_helpers {

// Throws unless x is a defined float32 / float64 tensor.
void require_float(const Tensor& x, const char* op);
// Both float, of the same dtype and on the same device.
void require_same(const Tensor& a, const Tensor& b, const char* op);
// The backend of x's device.
Backend& be(const Tensor& x);
// A new tensor sharing x's storage with the given geometry and no history.
Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset);
// Strides of x aligned to a broadcast `out` shape: 0 on dims x does not have or
// has with size 1.
Shape broadcast_strides(const Tensor& x, const Shape& out);
// The backend's elementwise kernels on whole tensors, without recording history.
Tensor unary_raw(UnaryOp op, const Tensor& x, double param = 0.0);
Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, const char* name);
// Moves `dim` to the last position (a view) so row kernels can work on it.
Tensor dim_to_last(const Tensor& x, int64_t dim);
// `dims` made non-negative, checked and sorted; empty means every dim.
std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t rank, const char* op);
// The shape without `dims` (sorted), and the shape with `dims` set to 1.
Shape drop_dims(const Shape& keep_shape, const std::vector<int64_t>& dims);
Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims);
// Every index must be int64 and in [0, limit), except `ignored` (when has_ignored).
void check_indices(const Tensor& ids, int64_t limit, bool has_ignored, int64_t ignored, const char* op,
                   const char* what);

// Reduces `dims` of x with a row kernel: permutes kept dims first and reduced dims
// last, then one kernel call over rows. Returns the keepdim-shaped result.
template <typename RowKernel>
Tensor reduce_raw(const Tensor& x, const std::vector<int64_t>& dims, RowKernel kernel) {
  std::vector<int64_t> order;
  Shape keep_shape = x.shape();
  int64_t cols = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) order.push_back(d);
  for (int64_t d : dims) {
    order.push_back(d);
    cols *= x.shape()[d];
    keep_shape[d] = 1;
  }
  Tensor arranged = x.dim() ? permute(x, order).contiguous() : x.contiguous();
  Tensor out = Tensor::empty(keep_shape, x.dtype(), x.device());
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  kernel(arranged, out, rows, cols);
  return out;
}

// Runs a row kernel over `dim` of x, returning the result laid out like x.
template <typename RowKernel>
Tensor along_dim(const Tensor& x, int64_t dim, RowKernel kernel) {
  Tensor moved = dim_to_last(x, dim).detach().contiguous();
  Tensor out = Tensor::empty(moved.shape(), x.dtype(), x.device());
  const int64_t cols = moved.dim() ? moved.size(-1) : 1;
  const int64_t rows = cols ? moved.numel() / cols : 0;
  if (moved.numel()) kernel(moved, out, rows, cols);
  return dim_to_last(out, dim);
}

// ---- for the fused kernels' defaults (engine/fused_kernel.h: layernorm_forward's, ...) ---
// They are composed from a backend's primitives and see only device pointers.

// Scratch device memory: n elements of dt from b.allocate, released on scope exit.
class Scratch {
 public:
  Scratch(Backend& b, DType dt, int64_t n) : b_(b), p_(n > 0 ? b.allocate(static_cast<size_t>(n) * dtype_size(dt)) : nullptr) {}
  ~Scratch() {
    if (p_) b_.deallocate(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return p_; }

 private:
  Backend& b_;
  void* p_;
};

// p advanced by `elements` elements of dt.
inline void* at(void* p, DType dt, int64_t elements) {
  return static_cast<char*>(p) + elements * static_cast<int64_t>(dtype_size(dt));
}
inline const void* at(const void* p, DType dt, int64_t elements) {
  return static_cast<const char*>(p) + elements * static_cast<int64_t>(dtype_size(dt));
}

// Broadcast plans over a (rows, cols) buffer: with another (rows, cols) buffer, with a
// per-row value (rows,) and with a per-column value (cols,).
inline BroadcastPlan same_plan(int64_t rows, int64_t cols) { return {{rows, cols}, {cols, 1}, {cols, 1}}; }
inline BroadcastPlan per_row_plan(int64_t rows, int64_t cols) { return {{rows, cols}, {cols, 1}, {1, 0}}; }
inline BroadcastPlan per_col_plan(int64_t rows, int64_t cols) { return {{rows, cols}, {cols, 1}, {0, 1}}; }
// n values with one scalar (b broadcast).
inline BroadcastPlan scalar_plan(int64_t n) { return {{n}, {1}, {0}}; }

// n values of dt on the device as doubles on the host, and back.
std::vector<double> to_host_f64(Backend& b, DType dt, const void* src, int64_t n);
void from_host_f64(Backend& b, DType dt, const std::vector<double>& values, void* dst);
// n int64 indices (ids, targets) from the device.
std::vector<int64_t> indices_to_host(Backend& b, const int64_t* src, int64_t n);

}  // namespace runway::op_helpers
