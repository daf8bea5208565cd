// runway::load_backends for builds with CUDA: registers a CudaBackend when a device
// is visible, otherwise records why CUDA is unavailable. Never throws or aborts:
// without a driver or device, cudaGetDeviceCount returns an error code, which is
// noted as the reason.
#include <cuda_runtime.h>

#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>

#include "cuda/cuda_backend.h"
#include "engine/backend.h"

namespace runway {

// Each family's CUDA implementations of its fused kernels (cuda/ops/<family>.cu), registered
// by name (engine/fused_kernel.h). Called here, once, so that no linker option is needed to
// keep a family's object file: this call references it.
void register_layernorm_cuda_kernels();
void register_rmsnorm_cuda_kernels();
void register_reduce_cuda_kernels();
void register_softmax_cuda_kernels();
void register_embedding_cuda_kernels();
void register_attention_cuda_kernels();
void register_attention_blockwise_cuda_kernels();

namespace {

void register_cuda_kernels() {
  register_layernorm_cuda_kernels();
  register_rmsnorm_cuda_kernels();
  register_reduce_cuda_kernels();
  register_softmax_cuda_kernels();
  register_embedding_cuda_kernels();
  register_attention_cuda_kernels();
  register_attention_blockwise_cuda_kernels();
}

void load_cuda_backend() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so it is not reported by a later call
    note_backend_unavailable(Device::CUDA, std::string("no usable CUDA driver or device: ") +
                                               cudaGetErrorName(status) + " (" +
                                               cudaGetErrorString(status) + ")");
    return;
  }
  if (count < 1) {
    note_backend_unavailable(Device::CUDA, "no CUDA device is visible (cudaGetDeviceCount = 0)");
    return;
  }
  // A rank of a data-parallel run (mpirun; docs/distributed.md) takes the GPU of its
  // local rank, before the backend binds to the current device.
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* local_rank = std::getenv(name)) {
      (void)cudaSetDevice(std::atoi(local_rank) % count);
      break;
    }
  try {
    // Created once and intentionally never destroyed: tensors may still hold device
    // memory during static destruction, and tearing down cuBLAS or the stream while
    // the CUDA runtime unloads at exit is unsafe. The driver reclaims everything.
    static CudaBackend* backend = new CudaBackend();
    register_cuda_kernels();
    register_backend(backend);
  } catch (const std::exception& e) {
    note_backend_unavailable(Device::CUDA,
                             std::string("CUDA backend failed to initialize: ") + e.what());
  }
}

}  // namespace

void load_backends() {
  static std::once_flag once;
  try {
    std::call_once(once, load_cuda_backend);
  } catch (...) {
    // load_cuda_backend catches everything it expects; never let anything escape.
  }
}

}  // namespace runway
