#include "engine/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace runway {

// ---- shape helpers -------------------------------------------------------------

std::string shape_to_string(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1)
      throw Error(fmt::format("{}: shapes {} and {} cannot be broadcast together", op,
                              shape_to_string(a), shape_to_string(b)));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int64_t normalize_dim(int64_t dim, int64_t rank, const char* op) {
  const int64_t d = dim < 0 ? dim + rank : dim;
  if (d < 0 || d >= std::max<int64_t>(rank, 1))
    throw Error(fmt::format("{}: dim {} is out of range for a tensor of rank {}", op, dim, rank));
  return d;
}

// ---- storage -----------------------------------------------------------------------

Storage::Storage(Device dev, size_t n) : device(dev), nbytes(n) {
  data = backend_for(dev).allocate(std::max<size_t>(n, 1));
}

Storage::~Storage() {
  if (data) backend_for(device).deallocate(data);
}

// ---- creation ------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw Error(fmt::format("empty: negative dimension in shape {}", shape_to_string(shape)));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(device, shape_numel(shape) * dtype_size(dtype));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  backend_for(device).fill(dtype, t.raw_data(), t.numel(), value);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

namespace {
template <typename T>
void store_values(const std::vector<double>& values, void* dst) {
  T* out = static_cast<T*>(dst);
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<T>(values[i]);
}

void store_as(DType dtype, const std::vector<double>& values, void* dst) {
  switch (dtype) {
    case DType::Float32: store_values<float>(values, dst); break;
    case DType::Float64: store_values<double>(values, dst); break;
    case DType::Int64: store_values<int64_t>(values, dst); break;
  }
}
}  // namespace

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw Error(fmt::format("from_vector: {} values do not fill shape {} ({} elements)",
                            values.size(), shape_to_string(shape), shape_numel(shape)));
  Tensor t = empty(shape, dtype);
  store_as(dtype, values, t.raw_data());
  return t;
}

Tensor Tensor::from_indices(const std::vector<int64_t>& values, const Shape& shape) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw Error(fmt::format("from_indices: {} values do not fill shape {}", values.size(),
                            shape_to_string(shape)));
  Tensor t = empty(shape, DType::Int64);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

Tensor Tensor::arange(double start, double end, double step, DType dtype) {
  if (step == 0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step))
    throw Error(fmt::format("arange: invalid range start={} end={} step={}", start, end, step));
  const int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + step * static_cast<double>(i);
  return from_vector(v, {n}, dtype);
}

Tensor Tensor::uniform(const Shape& shape, double low, double high, Generator& gen, DType dtype) {
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = gen.uniform(low, high);
  return from_vector(v, shape, dtype);
}

Tensor Tensor::normal(const Shape& shape, double mean, double stddev, Generator& gen, DType dtype) {
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = mean + stddev * gen.normal();
  return from_vector(v, shape, dtype);
}

// ---- metadata --------------------------------------------------------------------------

namespace {
const TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  if (!impl) throw Error("use of an undefined Tensor");
  return *impl;
}
}  // namespace

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int64_t Tensor::size(int64_t d) const { return shape()[normalize_dim(d, dim(), "size")]; }
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device; }
int64_t Tensor::offset() const { return checked(impl_).offset; }
std::string Tensor::shape_str() const { return shape_to_string(shape()); }

bool Tensor::is_contiguous() const {
  const auto& sh = shape();
  const auto& st = strides();
  if (shape_numel(sh) == 0) return true;  // no element to be out of place
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

bool Tensor::same_storage(const Tensor& other) const {
  return defined() && other.defined() && impl_->storage == other.impl_->storage;
}

void* Tensor::raw_data() const {
  const auto& impl = checked(impl_);
  return static_cast<char*>(impl.storage->data) + impl.offset * dtype_size(impl.dtype);
}

template <typename T> T* Tensor::data() {
  if (dtype() != dtype_of<T>::value)
    throw Error(fmt::format("data<{}>() called on a {} tensor", dtype_name(dtype_of<T>::value),
                            dtype_name(dtype())));
  if (device() != Device::CPU) throw Error("data<T>() needs a CPU tensor; call .to(Device::CPU)");
  return static_cast<T*>(raw_data());
}
template <typename T> const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}
template float* Tensor::data<float>();
template double* Tensor::data<double>();
template int64_t* Tensor::data<int64_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const int64_t* Tensor::data<int64_t>() const;

std::vector<double> Tensor::to_vector() const {
  Tensor c = detach().to(Device::CPU).contiguous();
  std::vector<double> out(c.numel());
  switch (c.dtype()) {
    case DType::Float32: std::copy_n(c.data<float>(), out.size(), out.begin()); break;
    case DType::Float64: std::copy_n(c.data<double>(), out.size(), out.begin()); break;
    case DType::Int64:
      std::transform(c.data<int64_t>(), c.data<int64_t>() + out.size(), out.begin(),
                     [](int64_t v) { return static_cast<double>(v); });
      break;
  }
  return out;
}

std::vector<int64_t> Tensor::to_indices() const {
  if (dtype() != DType::Int64) throw Error(fmt::format("to_indices: tensor is {}, not int64", dtype_name(dtype())));
  Tensor c = to(Device::CPU).contiguous();
  return std::vector<int64_t>(c.data<int64_t>(), c.data<int64_t>() + c.numel());
}

double Tensor::at(const std::vector<int64_t>& index) const {
  if (static_cast<int64_t>(index.size()) != dim())
    throw Error(fmt::format("at: {} indices for a tensor of shape {}", index.size(), shape_str()));
  int64_t off = 0;
  for (int64_t i = 0; i < dim(); ++i) {
    if (index[i] < 0 || index[i] >= shape()[i])
      throw Error(fmt::format("at: index {} out of range for dim {} of shape {}", index[i], i, shape_str()));
    off += index[i] * strides()[i];
  }
  Tensor one(std::make_shared<TensorImpl>(*impl_));
  one.impl_->shape = {};
  one.impl_->strides = {};
  one.impl_->offset += off;
  one.impl_->grad_fn = nullptr;
  one.impl_->grad = nullptr;
  return one.to_vector()[0];
}

double Tensor::item() const {
  if (numel() != 1) throw Error(fmt::format("item: tensor of shape {} has {} elements, not 1", shape_str(), numel()));
  return to_vector()[0];
}

// ---- conversions ------------------------------------------------------------------------

Tensor Tensor::contiguous() const { return runway::contiguous(*this); }

Tensor Tensor::clone() const { return runway::copy(*this); }

// Conversions are not recorded on the tape: the result is a new leaf. Convert
// parameters and data before building a graph.
Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor src = detach().contiguous();
  Tensor out = Tensor::empty(shape(), target, device());
  backend_for(device()).cast(dtype(), src.raw_data(), target, out.raw_data(), numel());
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = detach().contiguous();
  Tensor out = Tensor::empty(shape(), dtype(), target);
  const size_t nbytes = numel() * dtype_size(dtype());
  if (nbytes == 0) return out;
  if (device() == Device::CPU) {
    backend_for(target).copy_from_host(out.raw_data(), src.raw_data(), nbytes);
  } else if (target == Device::CPU) {
    backend_for(device()).copy_to_host(out.raw_data(), src.raw_data(), nbytes);
  } else {
    throw Error("to(device): copies between two accelerator devices are not supported");
  }
  return out;
}

// ---- views -----------------------------------------------------------------------------------

Tensor Tensor::reshape(const Shape& s) const { return runway::reshape(*this, s); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return runway::transpose(*this, d0, d1); }
Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return runway::permute(*this, dims); }
Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  return runway::slice(*this, d, start, end);
}
Tensor Tensor::expand(const Shape& s) const { return runway::expand(*this, s); }

// ---- autograd -------------------------------------------------------------------------------

bool Tensor::requires_grad() const { return checked(impl_).requires_grad; }

Tensor& Tensor::set_requires_grad(bool value) {
  if (value && !is_floating(dtype()))
    throw Error(fmt::format("set_requires_grad: only float tensors can require grad, not {}", dtype_name(dtype())));
  if (!value && impl_->grad_fn)
    throw Error("set_requires_grad(false) on a non-leaf tensor; use detach()");
  impl_->requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(checked(impl_).grad); }

void Tensor::zero_grad() { checked(impl_), impl_->grad = nullptr; }

bool Tensor::is_leaf() const { return checked(impl_).grad_fn == nullptr; }

void Tensor::backward() const {
  if (numel() != 1)
    throw Error(fmt::format("backward() without an upstream gradient needs a single-element tensor, "
                            "got shape {}", shape_str()));
  run_backward(*this, Tensor::ones(shape(), dtype(), device()));
}

void Tensor::backward(const Tensor& upstream) const { run_backward(*this, upstream); }

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = checked(impl_).storage;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  return Tensor(impl);
}

// ---- printing --------------------------------------------------------------------------------

namespace {
void format_rec(std::string& out, const std::vector<double>& v, const Shape& shape, size_t d,
                int64_t base, int max_per_dim, int indent, DType dt) {
  const Shape strides = contiguous_strides(shape);
  if (d == shape.size()) {
    out += dt == DType::Int64 ? fmt::format("{}", static_cast<int64_t>(v[base]))
                              : fmt::format("{:.6g}", v[base]);
    return;
  }
  out += "[";
  const int64_t n = shape[d];
  for (int64_t i = 0; i < n; ++i) {
    if (n > max_per_dim && i == max_per_dim / 2) {
      out += "...";
      i = n - max_per_dim / 2 - 1;
      out += ", ";
      if (d + 1 < shape.size()) out += "\n" + std::string(indent + 1, ' ');
      continue;
    }
    format_rec(out, v, shape, d + 1, base + i * strides[d], max_per_dim, indent + 1, dt);
    if (i + 1 < n) {
      out += ", ";
      if (d + 1 < shape.size()) out += "\n" + std::string(indent + 1, ' ');
    }
  }
  out += "]";
}
}  // namespace

std::string Tensor::to_string(int max_per_dim) const {
  if (!defined()) return "Tensor(undefined)";
  std::string body;
  format_rec(body, to_vector(), shape(), 0, 0, std::max(max_per_dim, 2), 7, dtype());
  return fmt::format("tensor({}, shape={}, dtype={}, device={}{})", body, shape_str(),
                     dtype_name(dtype()), device_name(device()),
                     requires_grad() ? ", requires_grad" : "");
}

// ---- operators ---------------------------------------------------------------------------------

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }
Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
Tensor operator-(const Tensor& a, double s) { return add_scalar(a, -s); }
Tensor operator/(const Tensor& a, double s) { return mul_scalar(a, 1.0 / s); }
Tensor operator+(double s, const Tensor& a) { return add_scalar(a, s); }
Tensor operator*(double s, const Tensor& a) { return mul_scalar(a, s); }

}  // namespace runway
