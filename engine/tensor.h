// Tensor: an N-dimensional, row-major, strided view of a device buffer, plus the
// autograd bookkeeping (requires_grad, grad, the node that produced it).
//
// A Tensor is a cheap handle (shared_ptr to TensorImpl); copies share data.
// Views (reshape of a contiguous tensor, transpose, permute, slice, expand) share
// the Storage and only change shape/strides/offset. Kernels work on contiguous
// buffers; ops call contiguous() where they need to.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace runway {

class Backend;
struct Node;
class Generator;

// A block of device memory, freed through the backend that allocated it.
struct Storage {
  Storage(Device device, size_t nbytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  Device device;
  size_t nbytes;
  void* data = nullptr;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::Float32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient of a leaf
  std::shared_ptr<Node> grad_fn;     // the op that produced this tensor, if recorded
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation -------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32, Device device = Device::CPU);
  static Tensor ones(const Shape& shape, DType dtype = DType::Float32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32,
                     Device device = Device::CPU);
  // [start, end) with step, like numpy.arange.
  static Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::Float32);
  // Copies `values` (row-major) into a new tensor of `shape`; sizes must match.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::Float32);
  static Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::Float32);
  // Seeded random tensors; see engine/random.h for the generator and its algorithm.
  static Tensor uniform(const Shape& shape, double low, double high, Generator& gen,
                        DType dtype = DType::Float32);
  static Tensor normal(const Shape& shape, double mean, double stddev, Generator& gen,
                       DType dtype = DType::Float32);

  // ---- metadata -------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  int64_t offset() const;
  bool is_contiguous() const;
  std::string shape_str() const;
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same_storage(const Tensor& other) const;

  // ---- raw access (CPU only; checks dtype) ----------------------------------
  template <typename T> T* data();
  template <typename T> const T* data() const;
  void* raw_data() const;  // pointer to element 0 of this view, any device
  // Element at a multi-index (handles strides); for tests and printing.
  double at(const std::vector<int64_t>& index) const;
  double item() const;  // single-element tensor -> double
  std::vector<double> to_vector() const;  // row-major values, any dtype, any device
  std::vector<int64_t> to_indices() const;

  // ---- conversions and copies ------------------------------------------------
  Tensor contiguous() const;  // differentiable (see runway::contiguous)
  Tensor clone() const;       // differentiable copy (runway::copy)
  // Not recorded on the tape: a converted tensor is a new leaf. When nothing changes
  // (same dtype / device) the tensor itself is returned, history included.
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // ---- views (differentiable) -----------------------------------------------
  Tensor reshape(const Shape& shape) const;  // one -1 allowed
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor expand(const Shape& shape) const;  // broadcast view (stride 0)

  // ---- autograd ---------------------------------------------------------------
  bool requires_grad() const;
  Tensor& set_requires_grad(bool value = true);
  Tensor grad() const;  // undefined Tensor when none was accumulated
  void zero_grad();
  // Reverse-mode from this tensor. With no argument it must hold one element.
  void backward() const;
  void backward(const Tensor& upstream) const;
  Tensor detach() const;  // same data, no history, requires_grad false
  bool is_leaf() const;

  std::string to_string(int max_per_dim = 6) const;  // fmt-formatted, numpy-like

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Operators forward to the differentiable ops in engine/ops.h.
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);

// ---- shape helpers used across the engine ------------------------------------
std::string shape_to_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
// NumPy broadcasting of two shapes; throws an Error naming `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Normalises a possibly negative dim for a tensor of rank `rank`; throws naming `op`.
int64_t normalize_dim(int64_t dim, int64_t rank, const char* op);

}  // namespace runway
