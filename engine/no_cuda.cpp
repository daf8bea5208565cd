// load_backends() for a build without CUDA: the CPU backend is built in, and
// asking for the CUDA device explains that this build has none.
#include "engine/backend.h"

namespace runway {

void load_backends() {
  note_backend_unavailable(Device::CUDA,
                           "this build of runway has no CUDA backend (nvcc was not found at "
                           "configure time, or -DRUNWAY_CUDA=OFF)");
}

}  // namespace runway
