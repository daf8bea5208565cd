// The parts of nn/distributed.h that need no MPI: launcher detection, broadcasting
// strings and tensors through any communicator, the parameter checksum. Builds without
// MPI get make_mpi_communicator from here too (nn/mpi_communicator.cpp replaces it).
#include "nn/distributed.h"

#include <fmt/format.h>

#include <cstdlib>
#include <vector>

#include "engine/dtype.h"
#include "nn/optim.h"

namespace runway::nn {

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

#ifndef RUNWAY_HAS_MPI
bool mpi_available() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  if (!launched_by_mpi()) return nullptr;
  throw Error("this process was started by mpirun, but this runway was built without MPI (-DRUNWAY_MPI=OFF or no "
              "Open MPI at build time: `make deps` installs it, then rebuild); run it without mpirun, or rebuild");
}
#endif

namespace {

// One rank alone: every collective is the identity.
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "single-rank"; }
  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(Tensor&) override {}
  void allreduce_min_max(uint64_t value, uint64_t* min, uint64_t* max) override { *min = *max = value; }
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

std::string broadcast_string(Communicator& comm, const std::string& text, int root) {
  uint64_t length = text.size();
  comm.broadcast(&length, sizeof(length), root);
  std::string out = comm.rank() == root ? text : std::string(length, '\0');
  if (length > 0) comm.broadcast(out.data(), length, root);
  return out;
}

void broadcast_tensor(Communicator& comm, Tensor& t, int root) {
  if (!t.is_contiguous()) throw Error("broadcast_tensor: the tensor must be contiguous");
  const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
  if (t.device() == Device::CPU) {
    comm.broadcast(t.raw_data(), bytes, root);
    return;
  }
  Tensor host = t.to(Device::CPU).contiguous();
  comm.broadcast(host.raw_data(), bytes, root);
  assign(t, host.to(t.device()));
}

uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

uint64_t tensor_checksum(const Tensor& t, uint64_t hash) {
  const Tensor host = t.to(Device::CPU).contiguous();
  return fnv1a(host.raw_data(), static_cast<size_t>(host.numel()) * dtype_size(host.dtype()), hash);
}

}  // namespace runway::nn
