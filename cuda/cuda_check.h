// Error checking for CUDA runtime and cuBLAS calls.
//
// Every CUDA / cuBLAS return code in cuda/ goes through one of these macros. A
// failure throws runway::Error naming the call, the library's error string, and the
// file and line; nothing here aborts or exits.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/dtype.h"

namespace runway {
namespace cuda_detail {

inline std::string where(const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line);
}

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw Error(std::string("CUDA error ") + cudaGetErrorName(status) + " (" +
              cudaGetErrorString(status) + ") in " + what + " at " + where(file, line));
}

inline void check_cublas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(std::string("cuBLAS error ") + cublasGetStatusName(status) + " (" +
              cublasGetStatusString(status) + ") in " + what + " at " + where(file, line));
}

}  // namespace cuda_detail
}  // namespace runway

// Checks a cudaError_t-returning call.
#define RUNWAY_CUDA_CHECK(call) \
  ::runway::cuda_detail::check_cuda((call), #call, __FILE__, __LINE__)

// Checks a cublasStatus_t-returning call.
#define RUNWAY_CUBLAS_CHECK(call) \
  ::runway::cuda_detail::check_cublas((call), #call, __FILE__, __LINE__)

// Checks the launch of the kernel named `kernel_name` (a string) that was just issued.
// Errors raised while the kernel runs surface at the next synchronizing call.
#define RUNWAY_CUDA_LAUNCH_CHECK(kernel_name) \
  ::runway::cuda_detail::check_cuda(cudaGetLastError(), kernel_name, __FILE__, __LINE__)
