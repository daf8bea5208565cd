// The CUDA implementation of runway::Backend (engine/backend.h).
//
// One backend drives one device (the current device when it is constructed). It owns
// one CUDA stream on which every copy, kernel and cuBLAS call is queued, a cuBLAS
// handle bound to that stream, and a caching allocator (cuda/cuda_allocator.h).
// Calls return once the work is queued; copy_to_host, copy_from_host and
// synchronize() wait for the stream. Every CUDA / cuBLAS failure throws
// runway::Error with the library's error string, file and line.
//
// Compute kernels support Float32 and Float64; fill, strided_copy, cast and the
// memory calls also take Int64. Broadcast and strided views support up to
// kMaxDims dimensions.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "engine/backend.h"

namespace runway {

namespace cuda_detail {
class CachingAllocator;
}

class CudaBackend : public Backend {
 public:
  static constexpr int kMaxDims = 8;

  CudaBackend();
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::CUDA; }
  // "cuda (NVIDIA H200 (sm_90), device 0)": what `runway train --device cuda` logs.
  std::string name() const override {
    return "cuda (" + device_description_ + ", device " + std::to_string(device_index_) + ")";
  }

  // ---- memory ---------------------------------------------------------------
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t nbytes) override;
  void copy_within(void* dst, const void* src, size_t nbytes) override;
  void synchronize() override;

  // ---- layout -----------------------------------------------------------------
  void fill(DType dt, void* dst, int64_t n, double value) override;
  void strided_copy(DType dt, const StridedView& src, void* dst) override;
  void cast(DType from, const void* src, DType to, void* dst, int64_t n) override;

  // ---- elementwise ------------------------------------------------------------
  void unary(UnaryOp op, DType dt, const void* x, void* y, int64_t n, double param) override;
  void binary(BinaryOp op, DType dt, const BroadcastPlan& plan, const void* a, const void* b,
              void* out) override;

  // ---- linear algebra -----------------------------------------------------------
  void gemm(DType dt, const GemmArgs& args, const void* a, const void* b, void* c) override;

  // ---- row kernels ----------------------------------------------------------------
  void sum_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;
  void max_rows(DType dt, const void* x, void* y, int64_t rows, int64_t cols) override;

  // The fused kernels' CUDA implementations are not methods: each cuda/ops/<family>.cu
  // registers its own by name (engine/fused_kernel.h) in register_<family>_cuda_kernels,
  // called by cuda/register_cuda.cpp when the backend is created; they reach the backend
  // through cuda_backend_of() and the accessors below (stream(), cublas()); attention's
  // through the *_cuda members below.

  // ---- attention: the CUDA implementations of the four attention kernels, registered
  // (engine/fused_kernel.h) by register_attention_cuda_kernels (cuda/ops/attention.cu) and
  // register_attention_blockwise_cuda_kernels (cuda/ops/attention_blockwise.cu). Blockwise:
  // standard and absorption run tiled kernels; two_hop (and a head_dim too large for
  // shared memory) runs the kernel's default, the materialised kernels with the maps in
  // scratch.
  void attention_forward_cuda(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                              void* y, void* attn, void* p, void* r);
  void attention_backward_cuda(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                               const void* attn, const void* p, const void* dy, void* dq, void* dk, void* dv);
  void attention_blockwise_forward_cuda(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                        const void* v, void* y, void* lse, void* runway_lse, void* runway_acc);
  void attention_blockwise_backward_cuda(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                         const void* v, const void* y, const void* lse, const void* runway_lse,
                                         const void* runway_acc, const void* dy, void* dq, void* dk, void* dv);

  // ---- positions ------------------------------------------------------------------------
  void rope(DType dt, const void* x, void* y, int64_t rows, int64_t seq, int64_t dim, double base,
            int64_t position_offset, bool inverse) override;

  // ---- CUDA specifics ---------------------------------------------------------------
  int device_index() const { return device_index_; }
  const std::string& device_description() const { return device_description_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }  // bound to stream()
  size_t cached_bytes() const;  // free blocks held by the allocator
  size_t live_bytes() const;    // blocks handed out and not yet deallocated
  void empty_cache();           // returns the cached free blocks to the driver

 private:
  int device_index_ = 0;
  std::string device_description_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<cuda_detail::CachingAllocator> allocator_;

  template <typename T>
  void attention_forward_impl(const AttentionArgs& args, const T* q, const T* k, const T* v,
                              T* y, T* attn, T* p, T* r);
  template <typename T>
  void attention_backward_impl(const AttentionArgs& args, const T* q, const T* k, const T* v,
                               const T* attn, const T* p, const T* dy, T* dq, T* dk, T* dv);
  // Blockwise attention (cuda/ops/attention_blockwise.cu): the tile (rows of queries and
  // keys per block) whose kernels fit in shared memory, 0 when none does.
  int blockwise_tile(DType dt, const AttentionArgs& args);
  template <typename T>
  void blockwise_forward_impl(const AttentionArgs& args, int tile, const T* q, const T* k, const T* v, T* y,
                              T* lse, T* runway_lse);
  template <typename T>
  void blockwise_backward_impl(const AttentionArgs& args, int tile, const T* q, const T* k, const T* v,
                               const T* y, const T* lse, const T* runway_lse, const T* dy, T* dq, T* dk, T* dv);
  // The absorption backward's path through R into the runway head (dacc, then the runway
  // head's extra dq and dk); KernelArgs is the kernels' argument block of that file.
  template <typename T, typename KernelArgs>
  void blockwise_runway_backward_impl(const AttentionArgs& args, KernelArgs kernel_args, T* dq, T* dk);
};

// The CudaBackend a fused kernel's CUDA implementation (registered by name,
// engine/fused_kernel.h, from cuda/ops/<family>.cu) runs on. Throws an Error naming the
// kernel if `b` is another backend that reports Device::CUDA as its kernel_device().
inline CudaBackend& cuda_backend_of(Backend& b, const char* kernel) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&b)) return *cuda;
  throw Error(std::string("fused kernel '") + kernel + "': its CUDA implementation needs the CUDA backend, got '" +
              b.name() + "'");
}

}  // namespace runway
