// Shape ops: reshape, permute (and transpose), slice, expand, copy (and contiguous),
// concat, split. Views share storage; their backward maps the gradient back.
//
// Per op: the forward, the backward beside it with its formula, then the family's
// gradcheck rows and its CPU kernel (CpuBackend::strided_copy, the gather behind copy
// and contiguous). CUDA: cuda/ops/shape.cu. Map: docs/architecture.md.

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/op_samples.h"

namespace runway {

using namespace op_helpers;
using cpu::dispatch_any;
using cpu::dispatch_float;
using cpu::for_each_run;

// =====================================================================================
// Shape ops. Views share storage; their backward maps the gradient back.
// =====================================================================================

static const OpName kReshape = declare_op("reshape");
Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer != -1) throw Error(fmt::format("reshape: more than one -1 in {}", shape_to_string(shape)));
      infer = static_cast<int64_t>(i);
    } else if (s[i] < 0) {
      throw Error(fmt::format("reshape: invalid size {} in {}", s[i], shape_to_string(shape)));
    } else {
      known *= s[i];
    }
  }
  if (infer != -1) {
    if (known == 0 || x.numel() % known != 0)
      throw Error(fmt::format("reshape: cannot reshape {} into {}", x.shape_str(), shape_to_string(shape)));
    s[infer] = x.numel() / known;
  }
  if (shape_numel(s) != x.numel())
    throw Error(fmt::format("reshape: cannot reshape {} ({} elements) into {} ({} elements)",
                            x.shape_str(), x.numel(), shape_to_string(s), shape_numel(s)));
  if (s == x.shape()) return x;
  Tensor base = x.is_contiguous() ? x : copy(x);
  Tensor out = make_view(base, s, contiguous_strides(s), base.offset());
  // dx = reshape(g, x's shape): the same elements in the same order.
  return record(kReshape, out, {x}, [in_shape = x.shape()](const Tensor& g) -> Grads {
    return {reshape(g, in_shape)};
  });
}

static const OpName kPermute = declare_op("permute");
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  if (static_cast<int64_t>(dims.size()) != x.dim())
    throw Error(fmt::format("permute: {} dims given for a tensor of shape {}", dims.size(), x.shape_str()));
  std::vector<int64_t> norm(dims.size()), inverse(dims.size());
  std::vector<bool> used(dims.size(), false);
  Shape shape(dims.size()), strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = normalize_dim(dims[i], x.dim(), "permute");
    if (used[d]) throw Error(fmt::format("permute: dim {} repeated", dims[i]));
    used[d] = true;
    norm[i] = d;
    inverse[d] = static_cast<int64_t>(i);
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  // dx = permute(g, inverse of dims): each gradient element back to its input position.
  return record(kPermute, out, {x}, [inverse](const Tensor& g) -> Grads { return {permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[normalize_dim(d0, x.dim(), "transpose")], dims[normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

static const OpName kSlice = declare_op("slice");
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  const int64_t d = normalize_dim(dim, x.dim(), "slice");
  const int64_t n = x.shape()[d];
  if (start < 0 || end < start || end > n)
    throw Error(fmt::format("slice: range [{}, {}) is invalid for dim {} of size {} (shape {})",
                            start, end, d, n, x.shape_str()));
  Shape shape = x.shape();
  shape[d] = end - start;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  // The gradient is g in the sliced range and zero outside it.
  return record(kSlice, out, {x}, [d, start, end, in_shape = x.shape()](const Tensor& g) -> Grads {
    std::vector<Tensor> parts;
    Shape before = in_shape, after = in_shape;
    before[d] = start;
    after[d] = in_shape[d] - end;
    if (start > 0) parts.push_back(Tensor::zeros(before, g.dtype(), g.device()));
    parts.push_back(g);
    if (end < in_shape[d]) parts.push_back(Tensor::zeros(after, g.dtype(), g.device()));
    return {parts.size() == 1 ? g : concat(parts, d)};
  });
}

static const OpName kExpand = declare_op("expand");
Tensor expand(const Tensor& x, const Shape& shape) {
  const Shape out_shape = broadcast_shapes(x.shape(), shape, "expand");
  if (out_shape != shape)
    throw Error(fmt::format("expand: {} cannot be expanded to {}", x.shape_str(), shape_to_string(shape)));
  if (shape == x.shape()) return x;
  Tensor out = make_view(x, shape, broadcast_strides(x, shape), x.offset());
  // The engine's sum_to folds the expanded gradient back.
  return record(kExpand, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

static const OpName kCopy = declare_op("copy");
Tensor copy(const Tensor& x) {
  if (!x.defined()) throw Error("copy: input tensor is undefined");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  StridedView view{x.impl()->storage->data, x.shape(), x.strides(), x.offset()};
  be(x).strided_copy(x.dtype(), view, out.raw_data());
  // dx = g (same shape; the engine lays it out as x needs).
  return record(kCopy, out, {x}, [](const Tensor& g) -> Grads { return {g}; });
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : copy(x); }

static const OpName kConcat = declare_op("concat");
Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) throw Error("concat: no tensors given");
  const int64_t d = normalize_dim(dim, xs[0].dim(), "concat");
  Shape out_shape = xs[0].shape();
  out_shape[d] = 0;
  for (const auto& x : xs) {
    if (x.dtype() != xs[0].dtype() || x.device() != xs[0].device() || x.dim() != xs[0].dim())
      throw Error(fmt::format("concat: {} {} does not match {} {}", x.shape_str(), dtype_name(x.dtype()),
                              xs[0].shape_str(), dtype_name(xs[0].dtype())));
    for (int64_t i = 0; i < x.dim(); ++i)
      if (i != d && x.shape()[i] != xs[0].shape()[i])
        throw Error(fmt::format("concat: shapes {} and {} differ outside dim {}", x.shape_str(),
                                xs[0].shape_str(), d));
    out_shape[d] += x.shape()[d];
  }
  // Concatenating along dim 0 of contiguous buffers is back-to-back copies: move `d`
  // to the front, copy, and move it back.
  std::vector<int64_t> front(out_shape.size());
  std::iota(front.begin(), front.end(), 0);
  std::swap(front[0], front[d]);
  Shape t_shape = out_shape;
  std::swap(t_shape[0], t_shape[d]);
  Tensor stacked = Tensor::empty(t_shape, xs[0].dtype(), xs[0].device());
  size_t offset_bytes = 0;
  {
    NoGradGuard no_grad;
    for (const auto& x : xs) {
      Tensor part = permute(x.detach(), front).contiguous();
      const size_t nbytes = part.numel() * dtype_size(part.dtype());
      if (nbytes) be(x).copy_within(static_cast<char*>(stacked.raw_data()) + offset_bytes, part.raw_data(), nbytes);
      offset_bytes += nbytes;
    }
  }
  Tensor out = d == 0 ? stacked : permute(stacked, front).contiguous().detach();
  std::vector<int64_t> sizes;
  for (const auto& x : xs) sizes.push_back(x.shape()[d]);
  // dxs = split(g, each input's size along dim): each input gets its own range of g.
  return record(kConcat, out, xs, [d, sizes](const Tensor& g) -> Grads { return split(g, sizes, d); });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) throw Error(fmt::format("split: negative size {}", s));
    total += s;
  }
  if (total != x.shape()[d])
    throw Error(fmt::format("split: sizes sum to {} but dim {} of {} has size {}", total, d,
                            x.shape_str(), x.shape()[d]));
  std::vector<Tensor> parts;
  int64_t start = 0;
  for (int64_t s : sizes) {
    parts.push_back(slice(x, d, start, start + s));
    start += s;
  }
  return parts;
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> shape_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("reshape", "reshape, also of a non-contiguous view",
             [](const std::vector<Tensor>& x) { return reshape(transpose(x[0], 0, 1), {3, -1}); },
             [] {
               return Samples{{"(2,6) -> T -> (3,4)", {rnd({2, 6}, 41)}, {}},
                              threaded("(258,259) -> T -> (3,-1)", {rnd({258, 259}, 53)})};
             }));
  t.push_back(op_entry("permute", "permute (2,3,4) -> dims (2,0,1)",
             [](const std::vector<Tensor>& x) { return permute(x[0], {2, 0, 1}); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 42)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 54)})}; }));
  t.push_back(op_entry("transpose", "transpose dims 0 and 2 (composite of permute)",
             [](const std::vector<Tensor>& x) { return transpose(x[0], 0, 2); },
             [] { return Samples{{"(2,3,4)", {rnd({2, 3, 4}, 43)}, {}}, threaded("(3,129,173)", {rnd({3, 129, 173}, 55)})}; },
             true));
  t.push_back(op_entry("slice", "slices along dims 0 and 1, including the edges",
             [](const std::vector<Tensor>& x) {
               const int64_t n = x[0].size(1);
               return concat({reshape(slice(x[0], 1, 1, 3), {-1}), reshape(slice(x[0], 0, 0, 1), {-1}),
                              reshape(slice(x[0], 1, n - 1, n), {-1})}, 0);
             },
             [] {
               return Samples{{"(3,5)", {rnd({3, 5}, 44)}, {}}, {"(4,3)", {rnd({4, 3}, 45)}, {}},
                              threaded("(257,261) columns 1..259", {rnd({257, 261}, 56)}, [](const std::vector<Tensor>& x) {
                                return reshape(slice(x[0], 1, 1, 260), {-1});
                              })};
             }));
  t.push_back(op_entry("expand", "broadcast view (3,1) -> (2,3,4)",
             [](const std::vector<Tensor>& x) { return mul(expand(x[0], {2, 3, 4}), x[1]); },
             [] {
               return Samples{{"(3,1) -> (2,3,4)", {rnd({3, 1}, 46), rnd({2, 3, 4}, 47)}, {}},
                              threaded("(257,1) -> (257,259)", {rnd({257, 1}, 57), rnd({257, 259}, 58)},
                                       [](const std::vector<Tensor>& x) { return mul(expand(x[0], {257, 259}), x[1]); })};
             }));
  t.push_back(op_entry("copy", "copy of a transposed view",
             [](const std::vector<Tensor>& x) { return copy(transpose(x[0], 0, 1)); },
             [] { return Samples{{"(3,4)^T", {rnd({3, 4}, 48)}, {}}, threaded("(259,257)^T", {rnd({259, 257}, 59)})}; }));
  t.push_back(op_entry("concat", "concat along dim 0 and dim 1",
             [](const std::vector<Tensor>& x) {
               Tensor c1 = concat({x[0], x[1]}, 1);  // (2,3)+(2,2) -> (2,5)
               return concat({c1, x[2]}, 0);          // (2,5)+(1,5) -> (3,5)
             },
             [] {
               return Samples{{"(2,3)|(2,2) then /(1,5)", {rnd({2, 3}, 49), rnd({2, 2}, 50), rnd({1, 5}, 51)}, {}},
                              threaded("(257,130)|(257,129)", {rnd({257, 130}, 60), rnd({257, 129}, 64)},
                                       [](const std::vector<Tensor>& x) { return concat({x[0], x[1]}, 1); })};
             }));
  t.push_back(op_entry("split", "split into parts, reordered and scaled (composite of slice)",
             [](const std::vector<Tensor>& x) {
               auto parts = split(x[0], {1, 3, 1}, 1);
               return concat({mul_scalar(parts[2], 3.0), parts[0], mul_scalar(parts[1], -2.0)}, 1);
             },
             [] {
               return Samples{{"(2,5) -> 1|3|1", {rnd({2, 5}, 52)}, {}},
                              threaded("(257,259) -> 100|59|100", {rnd({257, 259}, 65)}, [](const std::vector<Tensor>& x) {
                                auto parts = split(x[0], {100, 59, 100}, 1);
                                return concat({mul_scalar(parts[2], 3.0), parts[0], mul_scalar(parts[1], -2.0)}, 1);
                              })};
             },
             true));
  return t;
}

// =====================================================================================
// CPU kernels (CpuBackend, engine/cpu_backend.h).
// =====================================================================================

void CpuBackend::strided_copy(DType dt, const StridedView& src, void* dst) {
  dispatch_any(dt, [&](auto t) {
    using T = decltype(t);
    BroadcastPlan plan{src.shape, src.strides, Shape(src.shape.size(), 0)};
    const T* base = static_cast<const T*>(src.base) + src.offset;
    T* out = static_cast<T*>(dst);
    for_each_run(plan, [&](int64_t o, int64_t a, int64_t, int64_t n, int64_t as, int64_t) {
      if (as == 1) {
        std::memcpy(out + o, base + a, n * sizeof(T));
      } else {
        for (int64_t i = 0; i < n; ++i) out[o + i] = base[a + i * as];
      }
    });
  });
}

}  // namespace runway
