// safetensors files (https://huggingface.co/docs/safetensors, the format the Python
// `safetensors` package and PyTorch/JAX checkpoints on the Hugging Face hub use): many
// named tensors plus string metadata in one file.
//
// Layout:
//   N          8 bytes, unsigned little-endian: the length of the header
//   header     N bytes of UTF-8 JSON, an object mapping each tensor name to
//                {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
//              plus an optional "__metadata__" object of string -> string
//   data       the raw little-endian tensor bytes; data_offsets count from the first
//              byte after the header, and the tensors tile the data section exactly
//              (no gaps, no overlaps, nothing after the last one)
//
// Supported element types: F32 (float32), F64 (float64) and I64 (int64). Files holding
// any other dtype (F16, BF16, I32, BOOL, ...) are rejected with a runway::Error that
// names the dtype and the file.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace runway {

struct SafetensorsFile {
  // In the order of their data in the file (by data_offsets); zero-size tensors that
  // share an offset keep the order in which the header lists them.
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" object, if any
};

// Writes `tensors` (any device, any strides; their values, not their autograd state)
// and `metadata` as a safetensors file. The tensors' data is packed back to back in
// the order given. The header is compact JSON with the keys of each entry in the
// reference implementation's order (dtype, shape, data_offsets), "__metadata__" first
// and omitted when `metadata` is empty, padded with spaces so that the data starts at
// a multiple of 8 bytes.
//
// Names must be unique, valid UTF-8 and not "__metadata__"; metadata keys and values
// must be valid UTF-8. Tensors are not reordered, so a float64 tensor that follows an
// odd number of float32 elements starts at an offset that is not 8-byte aligned (legal;
// readers copy the bytes).
//
// The file appears atomically: the bytes go to a temporary file in the same directory,
// which is renamed over `path` only once fully written. On failure the temporary file
// is removed, `path` is left as it was, and an Error names `path`.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Reads a safetensors file into new CPU tensors (contiguous, requires_grad false).
// The file is validated in full before any tensor is allocated; every problem
// (unreadable or truncated file, absurd header length, invalid JSON, duplicate keys,
// missing or mistyped fields, unsupported dtype, negative dimensions, data_offsets
// that disagree with shape and dtype, overlapping tensors, gaps, trailing bytes,
// non-string metadata) is a runway::Error that names `path` and the problem.
SafetensorsFile read_safetensors(const std::string& path);

// read_safetensors of the `size` bytes at `data` (a whole file in memory); `name` stands
// for the path in error messages.
SafetensorsFile read_safetensors_bytes(const void* data, size_t size, const std::string& name);

}  // namespace runway
