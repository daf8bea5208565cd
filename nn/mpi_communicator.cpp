// The MPI communicator (nn/distributed.h), compiled only when the build has MPI
// (-DRUNWAY_MPI=AUTO finds Open MPI, or ON). Errors on MPI_COMM_WORLD are fatal
// (MPI_ERRORS_ARE_FATAL: the job is torn down, never left waiting), and a rank that fails
// calls abort(), which is MPI_Abort.
#include <fmt/format.h>
#include <mpi.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <limits>

#include "engine/dtype.h"
#include "nn/distributed.h"
#include "nn/optim.h"

namespace runway::nn {

namespace {

// MPI counts are int: large buffers go in chunks below INT_MAX elements.
constexpr size_t kMaxChunk = static_cast<size_t>(std::numeric_limits<int>::max()) / 2;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init(nullptr, nullptr);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // The ranks of this machine, in rank order (MPI_COMM_TYPE_SHARED), give the local rank.
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "MPI"; }

  void allreduce_sum(double* data, size_t count) override {
    for (size_t done = 0; done < count; done += kMaxChunk)
      MPI_Allreduce(MPI_IN_PLACE, data + done, static_cast<int>(std::min(kMaxChunk, count - done)), MPI_DOUBLE, MPI_SUM,
                    MPI_COMM_WORLD);
  }
  void allreduce_sum(Tensor& flat) override {
    if (flat.dtype() != DType::Float32 || !flat.is_contiguous())
      throw Error("MPI allreduce_sum: the buffer must be a contiguous float32 tensor");
    if (flat.device() != Device::CPU) {  // no NCCL: through the host
      Tensor host = flat.to(Device::CPU).contiguous();
      allreduce_sum(host);
      assign(flat, host.to(flat.device()));
      return;
    }
    float* data = flat.data<float>();
    const size_t count = static_cast<size_t>(flat.numel());
    for (size_t done = 0; done < count; done += kMaxChunk)
      MPI_Allreduce(MPI_IN_PLACE, data + done, static_cast<int>(std::min(kMaxChunk, count - done)), MPI_FLOAT, MPI_SUM,
                    MPI_COMM_WORLD);
  }
  void allreduce_min_max(uint64_t value, uint64_t* min, uint64_t* max) override {
    MPI_Allreduce(&value, min, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&value, max, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  }
  void broadcast(void* data, size_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (size_t done = 0; done < bytes; done += kMaxChunk)
      MPI_Bcast(p + done, static_cast<int>(std::min(kMaxChunk, bytes - done)), MPI_BYTE, root, MPI_COMM_WORLD);
  }
  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }
  [[noreturn]] void abort(int exit_code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; in case it does
  }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  if (!launched_by_mpi()) return nullptr;
  return std::make_unique<MpiCommunicator>();
}

}  // namespace runway::nn
