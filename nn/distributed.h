// Data-parallel training's communication: one interface (Communicator) over an existing
// engine, MPI for processes (CPU buffers, and the host side of every run) and NCCL for
// GPU buffers (cuda/nccl_communicator.h). Nothing here opens a socket or sums buffers
// itself: the reductions are MPI_Allreduce / ncclAllReduce. The single-process path uses
// no communicator at all (Trainer with comm == nullptr). See docs/distributed.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace runway::nn {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // This process's index among the ranks on its machine (picks the GPU).
  virtual int local_rank() const = 0;
  // "MPI" or "NCCL": what reduces the gradient buffer.
  virtual std::string name() const = 0;

  // In place, on every rank: the elementwise sum over the ranks (host buffers).
  virtual void allreduce_sum(double* data, size_t count) = 0;
  // In place: the elementwise sum over the ranks of a contiguous float32 tensor, on the
  // device this communicator reduces on (the CPU for MPI, which copies a CUDA tensor
  // through the host; the GPU for NCCL).
  virtual void allreduce_sum(Tensor& flat) = 0;
  // The smallest and largest `value` over the ranks (the parameter checksum).
  virtual void allreduce_min_max(uint64_t value, uint64_t* min, uint64_t* max) = 0;
  // Copies root's `bytes` bytes at `data` to every rank's `data` (host buffers).
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Stops every rank of the job (MPI_Abort): for a rank that failed, so the others do
  // not wait for it forever.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// Was this process started by an MPI launcher (mpirun / mpiexec: OMPI_COMM_WORLD_SIZE,
// PMI_SIZE or PMIX_RANK in the environment)?
bool launched_by_mpi();

// The communicator of all the ranks mpirun started (MPI_Init on first use; MPI_Finalize
// when it is destroyed), or nullptr when this process was not started by an MPI launcher
// (the single-process path). Throws an Error when it was, but this build has no MPI
// (-DRUNWAY_MPI=OFF or Open MPI missing at build time).
std::unique_ptr<Communicator> make_mpi_communicator();
// A communicator of one rank without MPI (every collective is the identity): with
// RUNWAY_DATA_PARALLEL_SELF=1, `runway train` runs the data-parallel path (flat gradient
// buffer, NCCL on --device cuda, replica checks) as N = 1 where there is no mpirun
// (scripts/gpu-check.sh on a GPU machine without Open MPI).
std::unique_ptr<Communicator> make_self_communicator();
// Whether this build has the MPI communicator.
bool mpi_available();

// Broadcasts a string from root (its length, then its bytes); returns root's string.
std::string broadcast_string(Communicator& comm, const std::string& text, int root = 0);
// Broadcasts the values of `t` (any device; CUDA tensors go through the host) from root.
void broadcast_tensor(Communicator& comm, Tensor& t, int root = 0);
// A 64-bit FNV-1a hash of bytes, and of the values of tensors (through a host copy for
// CUDA tensors): the cheap parameter checksum that detects ranks drifting apart.
uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash = 0xcbf29ce484222325ull);
uint64_t tensor_checksum(const Tensor& t, uint64_t hash = 0xcbf29ce484222325ull);

}  // namespace runway::nn
