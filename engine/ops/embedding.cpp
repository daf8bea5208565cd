// embedding: rows of a (V, C) table looked up by int64 ids.
//
// The two fused kernels (engine/fused_kernel.h), the forward, the backward beside it with
// its formula, then the gradcheck rows, the CPU implementations and the defaults composed
// from the Backend primitives. CUDA registers its implementations by name:
// cuda/ops/embedding.cu. Map: docs/architecture.md.

#include <fmt/format.h>

#include <cstring>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu_kernels.h"
#include "engine/fused_kernel.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/op_samples.h"

namespace runway {

using namespace op_helpers;
using cpu::dispatch_any;
using cpu::dispatch_float;
using cpu::for_each_run;

// The fused kernels (engine/fused_kernel.h): a default composed from the Backend primitives
// and, where there is one, a CPU implementation each, defined below; other devices register
// theirs under the same names.
// out[r, :] = weight[ids[r], :] for n ids; ids are checked by the op before this runs.
static void embedding_forward_default(Backend& b, DType, const void*, const int64_t*, void*, int64_t, int64_t);
static void cpu_embedding_forward(Backend& b, DType, const void*, const int64_t*, void*, int64_t, int64_t);
static const FusedKernel<DType, const void*, const int64_t*, void*, int64_t, int64_t>
    embedding_forward_kernel("embedding_forward", &embedding_forward_default, &cpu_embedding_forward);
// dweight[ids[r], :] += dout[r, :] (repeated ids accumulate).
static void embedding_backward_default(Backend& b, DType, const void*, const int64_t*, void*, int64_t, int64_t);
static void cpu_embedding_backward(Backend& b, DType, const void*, const int64_t*, void*, int64_t, int64_t);
static const FusedKernel<DType, const void*, const int64_t*, void*, int64_t, int64_t>
    embedding_backward_kernel("embedding_backward", &embedding_backward_default, &cpu_embedding_backward);

static const OpName kEmbedding = declare_op("embedding");
Tensor embedding(const Tensor& weight, const Tensor& ids) {
  require_float(weight, "embedding");
  if (weight.dim() != 2)
    throw Error(fmt::format("embedding: weight must be (V, C), got {}", weight.shape_str()));
  if (ids.device() != weight.device())
    throw Error("embedding: ids and weight are on different devices");
  const int64_t vocab = weight.size(0), dim = weight.size(1);
  check_indices(ids, vocab, false, 0, "embedding", "ids");
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  Tensor idc = ids.contiguous(), w = weight.detach().contiguous();
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  embedding_forward_kernel(be(weight), weight.dtype(), w.raw_data(), static_cast<const int64_t*>(idc.raw_data()),
                           out.raw_data(), ids.numel(), dim);
  // dW[ids[r]] += g[r]: a scatter-add over the looked-up rows
  return record(kEmbedding, out, {weight, ids}, [idc, vocab, dim](const Tensor& g) -> Grads {
    Tensor gc = g.contiguous();
    Tensor dw = Tensor::zeros({vocab, dim}, g.dtype(), g.device());
    embedding_backward_kernel(be(g), g.dtype(), gc.raw_data(), static_cast<const int64_t*>(idc.raw_data()),
                              dw.raw_data(), idc.numel(), dim);
    return {dw, Tensor()};
  });
}

// =====================================================================================
// The gradcheck table's rows for this family (engine/op_table.cpp collects them).
// =====================================================================================

std::vector<OpEntry> embedding_op_entries() {
  using namespace op_samples;
  std::vector<OpEntry> t;
  t.push_back(op_entry("embedding", "rows of a (V, C) table, repeated ids accumulate",
             [](const std::vector<Tensor>& x) { return embedding(x[0], x[1]); },
             [] {
               return Samples{{"(6,3) ids (2,4) with repeats", {rnd({6, 3}, 101), ids({0, 5, 2, 2, 1, 0, 5, 5}, {2, 4})}, {}},
                              {"(1,2) ids (3,)", {rnd({1, 2}, 102), ids({0, 0, 0}, {3})}, {}}};
             }));
  return t;
}

// =====================================================================================
// CPU implementations of the kernels (no backend state: the Backend& is unused).
// =====================================================================================

static void cpu_embedding_forward(Backend&, DType dt, const void* weight, const int64_t* ids, void* out, int64_t n,
                                  int64_t dim) {
  dispatch_float(dt, "embedding", [&](auto t) {
    using T = decltype(t);
    const T* w = static_cast<const T*>(weight);
    T* o = static_cast<T*>(out);
    for (int64_t r = 0; r < n; ++r) std::memcpy(o + r * dim, w + ids[r] * dim, dim * sizeof(T));
  });
}

static void cpu_embedding_backward(Backend&, DType dt, const void* dout, const int64_t* ids, void* dweight, int64_t n,
                                   int64_t dim) {
  dispatch_float(dt, "embedding_backward", [&](auto t) {
    using T = decltype(t);
    const T* g = static_cast<const T*>(dout);
    T* dw = static_cast<T*>(dweight);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < dim; ++c) dw[ids[r] * dim + c] += g[r * dim + c];
  });
}

// =====================================================================================
// The kernels' defaults: embedding composed from the Backend primitives, for a backend
// with no implementation registered. tests/test_backend_defaults.cpp holds them equal to
// the CPU implementations above.
// =====================================================================================

// The ids come to the host; each looked-up row is one device copy.
static void embedding_forward_default(Backend& b, DType dt, const void* weight, const int64_t* ids, void* out,
                                      int64_t n, int64_t dim) {
  if (n * dim == 0) return;
  const std::vector<int64_t> id = indices_to_host(b, ids, n);
  for (int64_t r = 0; r < n; ++r)
    b.copy_within(at(out, dt, r * dim), at(weight, dt, id[r] * dim), static_cast<size_t>(dim) * dtype_size(dt));
}

// dweight[ids[r]] += dout[r], one row at a time in order (repeated ids accumulate).
static void embedding_backward_default(Backend& b, DType dt, const void* dout, const int64_t* ids, void* dweight,
                                       int64_t n, int64_t dim) {
  if (n * dim == 0) return;
  const std::vector<int64_t> id = indices_to_host(b, ids, n);
  const BroadcastPlan row{{dim}, {1}, {1}};
  for (int64_t r = 0; r < n; ++r) {
    void* dst = at(dweight, dt, id[r] * dim);
    b.binary(BinaryOp::Add, dt, row, dst, at(dout, dt, r * dim), dst);
  }
}

}  // namespace runway
