// NumPy .npy files (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html)
// for any tensor: the interchange format of the CLI and of cross-checks against NumPy
// or PyTorch reference implementations.
//
// Supported element types: float32 ('f4'), float64 ('f8') and int64 ('i8'), in either
// byte order. Anything else (other dtypes, structured dtypes, object arrays, pickles)
// is rejected with a runway::Error that names the file and the problem.
#pragma once

#include <cstddef>
#include <string>

#include "engine/tensor.h"

namespace runway {

// Reads a .npy file of format version 1.0, 2.0 or 3.0 into a new CPU tensor
// (contiguous, row-major, requires_grad false). Big-endian data is byte-swapped and
// fortran_order True data (column-major) is reordered, so the result always has the
// declared shape and dtype. The file must hold exactly the bytes the header declares:
// short data and trailing bytes are both errors.
Tensor read_npy(const std::string& path);

// read_npy of the `size` bytes at `data` (a whole .npy file in memory); `name` stands
// for the path in error messages.
Tensor read_npy_bytes(const void* data, size_t size, const std::string& name);

// Writes `t` (any device, any strides; its values, not its autograd state) as a
// little-endian, C-order .npy file: format version 1.0, or 2.0 when the header does
// not fit in 1.0's 16-bit length. The header is padded with spaces to make the data
// start at a multiple of 64 bytes and ends in '\n', as NumPy writes it.
//
// The file appears atomically: the bytes go to a temporary file in the same
// directory, which is renamed over `path` only once fully written. On failure the
// temporary file is removed, `path` is left as it was, and an Error names `path`.
void write_npy(const std::string& path, const Tensor& t);

}  // namespace runway
