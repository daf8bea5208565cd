#include "engine/threads.h"

#include <unistd.h>

#include <cstdlib>

namespace runway {

void prefer_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the current runtime settings.
}

}  // namespace runway
