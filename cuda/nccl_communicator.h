// The NCCL communicator (nn/distributed.h) for data-parallel training on GPUs: the
// gradient buffer (a float32 tensor on this rank's GPU) is summed with ncclAllReduce on
// the device; everything else (the NCCL id, settings, checksums, the stop flag) goes
// through the host communicator (MPI) it wraps. Built when nccl.h and libnccl are found
// beside the CUDA toolkit and the build has MPI (cuda/CMakeLists.txt).
#pragma once

#include <memory>

#include "nn/distributed.h"

namespace runway::cuda {

// Creates the NCCL communicator of all of host's ranks (a collective call: every rank
// calls it). The GPU is the one load_backends() chose for this rank (its local rank, see
// cuda/register_cuda.cpp). Throws runway::Error naming NCCL's error.
std::unique_ptr<nn::Communicator> make_nccl_communicator(std::unique_ptr<nn::Communicator> host);

}  // namespace runway::cuda
