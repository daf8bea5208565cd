// Element types and devices a tensor can have.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace runway {

// Float32 and Float64 are the compute types. Int64 exists only to carry indices
// (embedding ids, cross-entropy targets): it can be created, viewed, copied and
// moved between devices, and arithmetic ops reject it by name.
enum class DType { Float32, Float64, Int64 };

enum class Device { CPU, CUDA };

inline size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int64: return 8;
  }
  return 0;
}

inline const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
  }
  return "?";
}

inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

inline bool is_floating(DType dt) { return dt == DType::Float32 || dt == DType::Float64; }

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::Float64; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };

using Shape = std::vector<int64_t>;

// Every error the engine reports about its inputs is a runway::Error whose message
// names the op and the offending shapes, dtypes or values.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace runway
