// The registry of fused kernels (engine/fused_kernel.h): which implementation a call runs
// (the one registered for the backend's kernel_device(), else the default; always the
// default when the backend has no fused kernels), and that a signature mismatch is a clear
// error naming the kernel.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/fused_kernel.h"
#include "engine/ops.h"
#include "engine/testing/delegating_backend.h"

using namespace runway;
using runway::testing::DelegatingBackend;

namespace {

// A kernel that says which implementation ran: out = 1 (default), 2 (CPU), 3 (CUDA).
void marker_default(Backend&, double* out, int64_t) { *out = 1; }
void marker_cpu(Backend&, double* out, int64_t) { *out = 2; }
void marker_cuda(Backend&, double* out, int64_t) { *out = 3; }
// Another signature: int32_t where the kernel has int64_t.
void marker_wrong(Backend&, double* out, int32_t) { *out = 4; }

// rmsnorm_forward's signature with eps as float instead of double.
void drifted_rmsnorm_forward(Backend&, DType, const void*, const void*, void*, void*, int64_t, int64_t, float) {}

const FusedKernel<double*, int64_t> marker_kernel("test_fused_kernel.marker", &marker_default);

double run(const FusedKernel<double*, int64_t>& kernel, Backend& b) {
  double out = 0;
  kernel(b, &out, 0);
  return out;
}

// Serves Device::CUDA with the CPU backend, with the fused kernels registered for CUDA.
class CudaKernelsOnCpu : public DelegatingBackend {
 public:
  CudaKernelsOnCpu() : DelegatingBackend(backend_for(Device::CPU), Device::CUDA, "cuda kernels on the cpu") {}
  Device kernel_device() const override { return Device::CUDA; }
};

// Removes what a test registered, also when it fails.
struct Unregister {
  std::string name;
  Device device;
  ~Unregister() { unregister_fused_kernel(name, device); }
};

}  // namespace

TEST_CASE("a fused kernel runs its default where nothing is registered for the backend's device") {
  Backend& cpu = backend_for(Device::CPU);
  CHECK(marker_kernel.implementation_for(Device::CPU) == nullptr);
  CHECK(run(marker_kernel, cpu) == 1);
  CudaKernelsOnCpu cuda;
  CHECK(run(marker_kernel, cuda) == 1);
}

TEST_CASE("a fused kernel runs the implementation registered for the backend's kernel device") {
  Backend& cpu = backend_for(Device::CPU);
  CudaKernelsOnCpu cuda;
  CHECK(run(marker_kernel, cpu) == 1);  // resolved and cached before the registrations below
  register_fused_kernel("test_fused_kernel.marker", Device::CPU, &marker_cpu);
  const Unregister cpu_guard{"test_fused_kernel.marker", Device::CPU};
  CHECK(run(marker_kernel, cpu) == 2);
  CHECK(run(marker_kernel, cuda) == 1);
  register_fused_kernel("test_fused_kernel.marker", Device::CUDA, &marker_cuda);
  const Unregister cuda_guard{"test_fused_kernel.marker", Device::CUDA};
  CHECK(run(marker_kernel, cpu) == 2);
  CHECK(run(marker_kernel, cuda) == 3);
  // Registering the same function again is harmless; another one for the same slot is an error.
  register_fused_kernel("test_fused_kernel.marker", Device::CUDA, &marker_cuda);
  CHECK_THROWS_WITH(register_fused_kernel("test_fused_kernel.marker", Device::CUDA, &marker_cpu),
                    Catch::Contains("test_fused_kernel.marker") && Catch::Contains("already registered"));
  // A delegating backend forwarding every kernel runs its target's; with the primitives
  // only, the default, whatever is registered.
  DelegatingBackend all(cpu, Device::CUDA, "all", DelegatingBackend::Forward::All);
  DelegatingBackend primitives(cpu, Device::CUDA, "primitives", DelegatingBackend::Forward::PrimitivesOnly);
  CHECK(all.kernel_device() == Device::CPU);
  CHECK(run(marker_kernel, all) == 2);
  CHECK_FALSE(primitives.has_fused_kernels());
  CHECK(run(marker_kernel, primitives) == 1);
  CHECK(marker_kernel.resolve(primitives) == &marker_default);
}

TEST_CASE("an implementation with another signature is a clear error naming the kernel") {
  // The kernel object exists: registering fails at once.
  CHECK_THROWS_WITH(register_fused_kernel("test_fused_kernel.marker", Device::CUDA, &marker_wrong),
                    Catch::Contains("fused kernel 'test_fused_kernel.marker'") &&
                        Catch::Contains("another signature"));
  CHECK(run(marker_kernel, backend_for(Device::CPU)) == 1);
  // Registered before the kernel object exists: the call fails, and so does a lookup.
  register_fused_kernel("test_fused_kernel.late", Device::CPU, &marker_wrong);
  const Unregister guard{"test_fused_kernel.late", Device::CPU};
  const FusedKernel<double*, int64_t> late("test_fused_kernel.late", &marker_default);
  double out = 0;
  CHECK_THROWS_WITH(late(backend_for(Device::CPU), &out, 0),
                    Catch::Contains("fused kernel 'test_fused_kernel.late'") && Catch::Contains("another signature"));
  CHECK_THROWS_WITH((find_fused_kernel<double*, int64_t>("test_fused_kernel.late", Device::CPU)),
                    Catch::Contains("test_fused_kernel.late"));
  CHECK(find_fused_kernel<double*, int32_t>("test_fused_kernel.late", Device::CPU) == &marker_wrong);
  // Two kernel objects with one name.
  CHECK_THROWS_WITH((FusedKernel<double*, int64_t>("test_fused_kernel.marker", &marker_default)),
                    Catch::Contains("defined twice"));
}

TEST_CASE("the engine's kernels are found by name with their CPU implementations") {
  // rmsnorm (engine/ops/rmsnorm.cpp) registers its CPU implementations from its kernel objects
  // (running the op here also links its file into this program, as op_table() does elsewhere).
  const Tensor y = rmsnorm(Tensor::ones({2, 3}, DType::Float64), Tensor::ones({3}, DType::Float64));
  CHECK(y.to_vector() == std::vector<double>(6, 1.0 / std::sqrt(1.0 + 1e-5)));
  CHECK(find_fused_kernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>(
            "rmsnorm_forward", Device::CPU) != nullptr);
  CHECK(find_fused_kernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>(
            "rmsnorm_forward", Device::CUDA) == nullptr);
  CHECK_THROWS_WITH((find_fused_kernel<DType, const void*, void*, int64_t>("rmsnorm_forward", Device::CPU)),
                    Catch::Contains("rmsnorm_forward"));
  // The kernel object by name, called as the op calls it.
  const auto& forward =
      fused_kernel<DType, const void*, const void*, void*, void*, int64_t, int64_t, double>("rmsnorm_forward");
  CHECK(forward.name() == "rmsnorm_forward");
  const std::vector<double> x{3, 4}, w{1, 2};
  std::vector<double> out(2), rstd(1);
  forward(backend_for(Device::CPU), DType::Float64, x.data(), w.data(), out.data(), rstd.data(), 1, 2, 0.5);
  CHECK(rstd[0] == 1 / std::sqrt(13.0));
  CHECK_THROWS_WITH((fused_kernel<DType, const void*>("rmsnorm_forward")), Catch::Contains("rmsnorm_forward"));
  CHECK_THROWS_WITH((fused_kernel<DType>("test_fused_kernel.none")), Catch::Contains("no fused kernel named"));
  // A device file registering with a signature that drifted from the kernel's (here eps as
  // float) fails at registration, naming the kernel, and leaves nothing registered.
  CHECK_THROWS_WITH(register_fused_kernel("rmsnorm_forward", Device::CUDA, &drifted_rmsnorm_forward),
                    Catch::Contains("fused kernel 'rmsnorm_forward'") && Catch::Contains("another signature"));
  CHECK(forward.implementation_for(Device::CUDA) == nullptr);
}

TEST_CASE("calls from several threads resolve while implementations are registered and removed") {
  Backend& cpu = backend_for(Device::CPU);
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, calls{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      while (!stop.load()) {
        const double v = run(marker_kernel, cpu);
        if (v != 1 && v != 2) ++wrong;
        ++calls;
      }
    });
  for (int i = 0; i < 200; ++i) {
    register_fused_kernel("test_fused_kernel.marker", Device::CPU, &marker_cpu);
    unregister_fused_kernel("test_fused_kernel.marker", Device::CPU);
  }
  while (calls.load() < 1000) std::this_thread::yield();
  stop = true;
  for (std::thread& t : callers) t.join();
  CHECK(wrong.load() == 0);
  CHECK(run(marker_kernel, cpu) == 1);
}
