// Fused kernels, registered by name: one kernel (rmsnorm's forward, layernorm's
// backward, ...) with a default composed from the Backend primitives and, per device,
// an optional faster implementation.
//
// A family file (engine/ops/<family>.cpp) defines the kernel object at namespace scope,
// with its default and its CPU implementation:
//
//   static FusedKernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>
//       rmsnorm_forward_kernel("rmsnorm_forward", &rmsnorm_forward_default, &cpu_rmsnorm_forward);
//
// and the op calls it like a function: rmsnorm_forward_kernel(be(x), dt, x, ...). The call
// runs the implementation registered for backend.kernel_device() when
// backend.has_fused_kernels(), else the default. Another backend adds its implementation
// by name, from its own file, with no declaration in any engine header:
//
//   register_fused_kernel("rmsnorm_forward", Device::CUDA, &cuda_rmsnorm_forward);
//
// (cuda/ops/rmsnorm.cu, called when the CUDA backend is created). The implementation's
// signature is checked against the kernel's, by typeid: a mismatch is a runway::Error
// naming the kernel, at registration when the kernel object exists already and at the
// first call otherwise. Every implementation takes the Backend it runs on first, so a
// default can call its primitives and a device implementation its stream or handles.
//
// The registry is a function-local static (no dependence on the order in which
// translation units are initialised) and is thread-safe: calls from several threads
// resolve under a mutex once per kernel and device, then read a cached pointer.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <typeinfo>

#include "engine/backend.h"
#include "engine/dtype.h"

namespace runway {

namespace fused_kernel_detail {

// Every function pointer is stored as this type (the one a function pointer may be cast
// to and back without a warning) beside the typeid of its real type.
using ErasedFn = void (*)();

// Adds `fn` (of signature `signature`) for `device` under `name`. Registering the same
// function again is a no-op; another function for the same name and device throws.
void register_erased(const std::string& name, Device device, ErasedFn fn, const std::type_info& signature);
bool unregister_erased(const std::string& name, Device device);

// The untyped half of FusedKernel: the name, the signature, and the per-device cache.
class KernelBase {
 public:
  KernelBase(const KernelBase&) = delete;
  KernelBase& operator=(const KernelBase&) = delete;
  const std::string& name() const { return name_; }

 protected:
  // Declares the kernel (two kernel objects with one name throw) and registers cpu_fn,
  // when not null, for Device::CPU.
  KernelBase(const char* name, const std::type_info& signature, ErasedFn cpu_fn);
  ~KernelBase();
  // The implementation registered for `device`, or nullptr when there is none (the
  // default then runs). Throws when the registered one has another signature.
  ErasedFn implementation(Device device) const;

 private:
  struct Resolved {
    ErasedFn fn;
    uint64_t generation;  // of the registry when resolved; a later registration re-resolves
  };
  static constexpr int kDevices = 2;  // Device::CPU, Device::CUDA

  ErasedFn resolve_slow(Device device) const;

  std::string name_;
  const std::type_info& signature_;
  mutable std::array<std::atomic<const Resolved*>, kDevices> cache_{};
  mutable std::mutex mutex_;
  mutable std::deque<Resolved> resolved_;  // owns what cache_ points to
};

}  // namespace fused_kernel_detail

template <typename... Args>
class FusedKernel : public fused_kernel_detail::KernelBase {
 public:
  using Fn = void (*)(Backend&, Args...);

  // default_fn: composed from the Backend primitives, never null. cpu_fn: the CPU
  // implementation, or nullptr (the CPU then runs the default too).
  FusedKernel(const char* name, Fn default_fn, Fn cpu_fn = nullptr)
      : KernelBase(name, typeid(Fn), reinterpret_cast<fused_kernel_detail::ErasedFn>(cpu_fn)),
        default_fn_(default_fn) {}

  void operator()(Backend& backend, Args... args) const { resolve(backend)(backend, args...); }

  // What a call on `backend` runs.
  Fn resolve(const Backend& backend) const {
    if (!backend.has_fused_kernels()) return default_fn_;
    const Fn fn = implementation_for(backend.kernel_device());
    return fn ? fn : default_fn_;
  }
  Fn default_fn() const { return default_fn_; }
  // The implementation registered for `device`, nullptr when none is.
  Fn implementation_for(Device device) const { return reinterpret_cast<Fn>(implementation(device)); }

 private:
  Fn default_fn_;
};

// Registers `fn` as the implementation of the kernel `name` on `device`. Its argument
// types (after the Backend&) must be the kernel's, exactly.
template <typename... Args>
void register_fused_kernel(const std::string& name, Device device, void (*fn)(Backend&, Args...)) {
  using Fn = void (*)(Backend&, Args...);
  fused_kernel_detail::register_erased(name, device, reinterpret_cast<fused_kernel_detail::ErasedFn>(fn),
                                       typeid(Fn));
}

// Removes the implementation of `name` on `device` (tests); false when there was none.
inline bool unregister_fused_kernel(const std::string& name, Device device) {
  return fused_kernel_detail::unregister_erased(name, device);
}

// The implementation of `name` registered for `device`, typed; nullptr when none is.
// Throws when the registered one has another signature. For tests that call one
// implementation directly (tests/test_threaded_kernels.cpp: the CPU kernels against
// their references), without a declaration in a header.
template <typename... Args>
void (*find_fused_kernel(const std::string& name, Device device))(Backend&, Args...);

namespace fused_kernel_detail {
ErasedFn find_erased(const std::string& name, Device device, const std::type_info& signature);
const KernelBase& find_kernel(const std::string& name, const std::type_info& signature);
}  // namespace fused_kernel_detail

// The kernel object named `name`, to call as its op does (a test that runs one kernel on a
// backend: tests/cuda/test_cuda_backend.cpp). Throws when no such kernel is linked into the
// program or when Args are not its argument types.
template <typename... Args>
const FusedKernel<Args...>& fused_kernel(const std::string& name) {
  using Fn = void (*)(Backend&, Args...);
  return static_cast<const FusedKernel<Args...>&>(fused_kernel_detail::find_kernel(name, typeid(Fn)));
}

template <typename... Args>
void (*find_fused_kernel(const std::string& name, Device device))(Backend&, Args...) {
  using Fn = void (*)(Backend&, Args...);
  return reinterpret_cast<Fn>(fused_kernel_detail::find_erased(name, device, typeid(Fn)));
}

}  // namespace runway
