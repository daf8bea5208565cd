// NCCL all-reduce for the gradient buffer of data-parallel training (see the header).
#include "cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstdlib>
#include <string>

#include "engine/dtype.h"

namespace runway::cuda {

namespace {

void check_nccl(ncclResult_t status, const char* what) {
  if (status != ncclSuccess)
    throw Error(fmt::format("NCCL: {} failed: {} ({})", what, ncclGetErrorString(status), static_cast<int>(status)));
}

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(fmt::format("CUDA: {} failed: {}", what, cudaGetErrorString(status)));
}

class NcclCommunicator final : public nn::Communicator {
 public:
  explicit NcclCommunicator(std::unique_ptr<nn::Communicator> host) : host_(std::move(host)) {
    // Rank 0 makes the id; MPI carries it to the others (the only thing NCCL needs from it).
    ncclUniqueId id{};
    if (host_->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_->broadcast(&id, sizeof(id), 0);
    check_cuda(cudaGetDevice(&device_), "cudaGetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_nccl(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int local_rank() const override { return host_->local_rank(); }
  std::string name() const override { return "NCCL"; }

  void allreduce_sum(double* data, size_t count) override { host_->allreduce_sum(data, count); }
  void allreduce_sum(Tensor& flat) override {
    if (flat.device() != Device::CUDA) {  // a host buffer: MPI's job
      host_->allreduce_sum(flat);
      return;
    }
    if (flat.dtype() != DType::Float32 || !flat.is_contiguous())
      throw Error("NCCL allreduce_sum: the buffer must be a contiguous float32 tensor");
    // The backend's kernels that wrote the gradients run on its own stream: wait for
    // them, reduce on ours, and wait for the sum before anyone reads it.
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize (before the all-reduce)");
    void* data = flat.raw_data();
    check_nccl(ncclAllReduce(data, data, static_cast<size_t>(flat.numel()), ncclFloat32, ncclSum, comm_, stream_),
               "ncclAllReduce");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (after the all-reduce)");
  }
  void allreduce_min_max(uint64_t value, uint64_t* min, uint64_t* max) override {
    host_->allreduce_min_max(value, min, max);
  }
  void broadcast(void* data, size_t bytes, int root) override { host_->broadcast(data, bytes, root); }
  void barrier() override { host_->barrier(); }
  [[noreturn]] void abort(int exit_code) override {
    if (comm_) ncclCommAbort(comm_);  // do not wait for ranks that are gone
    comm_ = nullptr;
    host_->abort(exit_code);
    std::_Exit(exit_code);  // not reached: the host's abort ends the process
  }

 private:
  std::unique_ptr<nn::Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

}  // namespace

std::unique_ptr<nn::Communicator> make_nccl_communicator(std::unique_ptr<nn::Communicator> host) {
  return std::make_unique<NcclCommunicator>(std::move(host));
}

}  // namespace runway::cuda
