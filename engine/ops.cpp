// The helpers shared by the op families (declared in engine/ops/op_helpers.h). The ops
// themselves live in engine/ops/<family>.cpp, each with its forward and backward side
// by side, its gradcheck rows and its CPU kernels (map: docs/architecture.md).
//
// Reading guide (the style of PyTorch's derivatives.yaml): every op is
//
//   static const OpName kFoo = declare_op("foo");
//   Tensor foo(x) {
//     ... forward through the backend ...
//     return record(kFoo, out, {x}, [saved...](const Tensor& g) -> Grads {
//       return {formula for dL/dx in terms of g and saved forward values};
//     });
//   }
//
// Backward formulas run with grad mode off and are written with these same ops.
// They may return a gradient of the broadcast (output) shape: the autograd engine
// sums it back to the input's shape in one place (sum_to in autograd.cpp).
// Saved forward values are captured detached (x.detach()), never the output itself.
#include "engine/ops/op_helpers.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "engine/backend.h"

namespace runway::op_helpers {

// ---- helpers: validation, views, dispatch -----------------------------------------

void require_float(const Tensor& x, const char* op) {
  if (!x.defined()) throw Error(fmt::format("{}: input tensor is undefined", op));
  if (!is_floating(x.dtype()))
    throw Error(fmt::format("{}: expected a float32 or float64 tensor, got {} of shape {}", op,
                            dtype_name(x.dtype()), x.shape_str()));
}

void require_same(const Tensor& a, const Tensor& b, const char* op) {
  require_float(a, op);
  require_float(b, op);
  if (a.dtype() != b.dtype())
    throw Error(fmt::format("{}: dtype mismatch: {} {} vs {} {}", op, a.shape_str(),
                            dtype_name(a.dtype()), b.shape_str(), dtype_name(b.dtype())));
  if (a.device() != b.device())
    throw Error(fmt::format("{}: device mismatch: {} on {} vs {} on {}", op, a.shape_str(),
                            device_name(a.device()), b.shape_str(), device_name(b.device())));
}

Backend& be(const Tensor& x) { return backend_for(x.device()); }

// A new tensor sharing x's storage with the given geometry and no history.
Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.impl()->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(impl);
}

// Strides of x aligned to a broadcast `out` shape: 0 on dims x does not have or
// has with size 1.
Shape broadcast_strides(const Tensor& x, const Shape& out) {
  Shape s(out.size(), 0);
  const size_t lead = out.size() - x.shape().size();
  for (size_t i = 0; i < x.shape().size(); ++i)
    s[lead + i] = x.shape()[i] == 1 ? 0 : x.strides()[i];
  return s;
}

Tensor unary_raw(UnaryOp op, const Tensor& x, double param) {
  Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(x).unary(op, x.dtype(), in.raw_data(), out.raw_data(), x.numel(), param);
  return out;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  require_same(a, b, name);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), name);
  BroadcastPlan plan{out_shape, broadcast_strides(a, out_shape), broadcast_strides(b, out_shape)};
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  be(a).binary(op, a.dtype(), plan, a.raw_data(), b.raw_data(), out.raw_data());
  return out;
}

// Moves `dim` to the last position (a view) so row kernels can work on it.
Tensor dim_to_last(const Tensor& x, int64_t dim) {
  return dim == x.dim() - 1 ? x : transpose(x, dim, x.dim() - 1);
}

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t rank,
                                    const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    out.resize(rank);
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  for (int64_t d : dims) {
    const int64_t n = normalize_dim(d, rank, op);
    if (std::find(out.begin(), out.end(), n) != out.end())
      throw Error(fmt::format("{}: dim {} given twice", op, d));
    out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Shape drop_dims(const Shape& keep_shape, const std::vector<int64_t>& dims) {
  Shape s;
  for (int64_t d = 0; d < static_cast<int64_t>(keep_shape.size()); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) s.push_back(keep_shape[d]);
  return s;
}

Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims) {
  Shape s = shape;
  for (int64_t d : dims) s[d] = 1;
  return s;
}

// Every index must be in [0, limit), except `ignored` (when has_ignored) is allowed.
void check_indices(const Tensor& ids, int64_t limit, bool has_ignored, int64_t ignored,
                   const char* op, const char* what) {
  if (ids.dtype() != DType::Int64)
    throw Error(fmt::format("{}: {} must be int64, got {} of shape {}", op, what, dtype_name(ids.dtype()), ids.shape_str()));
  for (int64_t v : ids.to_indices())
    if ((v < 0 || v >= limit) && !(has_ignored && v == ignored))
      throw Error(fmt::format("{}: {} contains {}, outside [0, {})", op, what, v, limit));
}

std::vector<double> to_host_f64(Backend& b, DType dt, const void* src, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  if (n == 0) return out;
  Scratch f64(b, DType::Float64, n);
  b.cast(dt, src, DType::Float64, f64.get(), n);
  b.copy_to_host(out.data(), f64.get(), static_cast<size_t>(n) * sizeof(double));
  return out;
}

void from_host_f64(Backend& b, DType dt, const std::vector<double>& values, void* dst) {
  const int64_t n = static_cast<int64_t>(values.size());
  if (n == 0) return;
  Scratch f64(b, DType::Float64, n);
  b.copy_from_host(f64.get(), values.data(), values.size() * sizeof(double));
  b.cast(DType::Float64, f64.get(), dt, dst, n);
}

std::vector<int64_t> indices_to_host(Backend& b, const int64_t* src, int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (n) b.copy_to_host(out.data(), src, out.size() * sizeof(int64_t));
  return out;
}

}  // namespace runway::op_helpers
