// The CUDA test programs' shared start: without a usable CUDA backend they print why
// (the reason load_backends() recorded) and exit with 77, which CTest reports as SKIPPED
// (SKIP_RETURN_CODE in tests/cuda/CMakeLists.txt).
#pragma once

#include <cstdio>
#include <exception>
#include <string>

#include "engine/backend.h"

namespace runway::testing {

constexpr int kSkipExitCode = 77;

// True (after printing "SKIP: <why>") when this process has no CUDA backend.
inline bool skip_without_cuda() {
  if (runway::backend_available(runway::Device::CUDA)) return false;
  std::string why = "CUDA backend not available";
  try {
    runway::backend_for(runway::Device::CUDA);
  } catch (const std::exception& e) {
    why = e.what();
  }
  std::printf("SKIP: %s\n", why.c_str());
  return true;
}

}  // namespace runway::testing
