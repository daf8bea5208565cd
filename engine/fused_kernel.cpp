// The registry of fused kernels (engine/fused_kernel.h).

#include "engine/fused_kernel.h"

#include <fmt/format.h>

#include <map>
#include <utility>

#include "engine/tensor.h"

namespace runway::fused_kernel_detail {

namespace {

const char* device_label(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

static_assert(static_cast<int>(Device::CUDA) == 1, "KernelBase::kDevices counts Device::CPU and Device::CUDA");

struct Implementation {
  ErasedFn fn = nullptr;
  const std::type_info* signature = nullptr;
};

struct Registry {
  std::mutex mutex;
  // Bumped by every change of `implementations`, so cached resolutions are redone.
  std::atomic<uint64_t> generation{1};
  std::map<std::pair<std::string, Device>, Implementation> implementations;
  struct Kernel {
    const std::type_info* signature;
    const KernelBase* object;
  };
  std::map<std::string, Kernel> kernels;  // the kernel objects, by name
};

// A function-local static: constructed on first use, whichever translation unit's static
// initialisation gets here first.
Registry& registry() {
  static Registry r;
  return r;
}

[[noreturn]] void throw_mismatch(const std::string& name, Device device, const std::type_info& registered,
                                 const std::type_info& expected) {
  throw Error(fmt::format(
      "fused kernel '{}': the implementation registered for {} has another signature than the kernel's "
      "(registered {}, kernel {}); its argument types after Backend& must be the kernel's, exactly",
      name, device_label(device), registered.name(), expected.name()));
}

}  // namespace

void register_erased(const std::string& name, Device device, ErasedFn fn, const std::type_info& signature) {
  if (!fn) throw Error(fmt::format("fused kernel '{}': null implementation for {}", name, device_label(device)));
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto kernel = r.kernels.find(name);
  if (kernel != r.kernels.end() && *kernel->second.signature != signature)
    throw_mismatch(name, device, signature, *kernel->second.signature);
  Implementation& slot = r.implementations[{name, device}];
  if (slot.fn == fn && *slot.signature == signature) return;  // registered twice: harmless
  if (slot.fn)
    throw Error(fmt::format("fused kernel '{}': a different implementation is already registered for {}", name,
                            device_label(device)));
  slot = Implementation{fn, &signature};
  r.generation.fetch_add(1, std::memory_order_acq_rel);
}

bool unregister_erased(const std::string& name, Device device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.implementations.erase({name, device}) == 0) return false;
  r.generation.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

ErasedFn find_erased(const std::string& name, Device device, const std::type_info& signature) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.implementations.find({name, device});
  if (it == r.implementations.end()) return nullptr;
  if (*it->second.signature != signature) throw_mismatch(name, device, *it->second.signature, signature);
  return it->second.fn;
}

const KernelBase& find_kernel(const std::string& name, const std::type_info& signature) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.kernels.find(name);
  if (it == r.kernels.end())
    throw Error(fmt::format("no fused kernel named '{}' in this program (is its family's file linked?)", name));
  if (*it->second.signature != signature)
    throw Error(fmt::format("fused kernel '{}' has the signature {}, not {}", name, it->second.signature->name(),
                            signature.name()));
  return *it->second.object;
}

KernelBase::KernelBase(const char* name, const std::type_info& signature, ErasedFn cpu_fn)
    : name_(name), signature_(signature) {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    if (!r.kernels.emplace(name_, Registry::Kernel{&signature, this}).second)
      throw Error(fmt::format("fused kernel '{}' is defined twice", name_));
  }
  if (cpu_fn) register_erased(name_, Device::CPU, cpu_fn, signature);
}

KernelBase::~KernelBase() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.kernels.find(name_);
  if (it != r.kernels.end() && it->second.object == this) r.kernels.erase(it);
}

ErasedFn KernelBase::implementation(Device device) const {
  const auto index = static_cast<size_t>(device);
  const Resolved* cached = cache_[index].load(std::memory_order_acquire);
  if (cached && cached->generation == registry().generation.load(std::memory_order_acquire)) return cached->fn;
  return resolve_slow(device);
}

// Looks the implementation up and checks its signature under the registry's lock (so the
// generation read belongs to the map read), then publishes an immutable Resolved.
ErasedFn KernelBase::resolve_slow(Device device) const {
  Registry& r = registry();
  ErasedFn fn = nullptr;
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    generation = r.generation.load(std::memory_order_acquire);
    const auto it = r.implementations.find({name_, device});
    if (it != r.implementations.end()) {
      if (*it->second.signature != signature_) throw_mismatch(name_, device, *it->second.signature, signature_);
      fn = it->second.fn;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  resolved_.push_back(Resolved{fn, generation});
  cache_[static_cast<size_t>(device)].store(&resolved_.back(), std::memory_order_release);
  return fn;
}

}  // namespace runway::fused_kernel_detail
