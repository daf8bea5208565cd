// libFuzzer harness for the .npy reader (engine/npy.h), on bytes in memory.
//
// Contract under test: any input either parses into a tensor that agrees with what the
// header declared, or throws a runway::Error. Anything else (another exception, a crash,
// a sanitizer report, a leak, a hang, an allocation larger than the input justifies) is
// a finding.
//
// The header length field makes nearly every mutation that changes the header's length
// (a digit more in the shape, a key respelled) fail on the length alone, so each input is
// also read a second way: the header ends at its first '\n' (where NumPy ends it) and the
// length field is set to match.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/npy.h"
#include "fuzz/verbose.h"

namespace {

void check(const uint8_t* data, size_t size) {
  runway::Tensor t;
  try {
    t = runway::read_npy_bytes(data, size, "fuzz.npy");
  } catch (const runway::Error& e) {
    runway::fuzz::report(e.what());
    return;  // rejected with the reader's own error: the expected outcome for garbage
  }
  // Accepted: the data must have come from the input, so it cannot be bigger than it,
  // and every byte of the result must be readable (ASan checks the reads).
  const size_t bytes = static_cast<size_t>(t.numel()) * runway::dtype_size(t.dtype());
  if (!t.is_contiguous() || bytes > size) std::abort();
  const unsigned char* p = static_cast<const unsigned char*>(t.raw_data());
  unsigned sum = 0;
  for (size_t i = 0; i < bytes; ++i) sum += p[i];
  runway::fuzz::report("accepted");
  volatile unsigned sink = sum;
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(data, size);
  // The length field: 2 bytes after the magic and version in 1.0, 4 bytes otherwise.
  if (size < 8) return 0;
  const size_t len_bytes = data[6] == 1 ? 2 : 4;
  const size_t header_start = 8 + len_bytes;
  if (size <= header_start) return 0;
  const auto* newline = static_cast<const uint8_t*>(std::memchr(data + header_start, '\n', size - header_start));
  if (!newline) return 0;
  const uint64_t header_len = static_cast<uint64_t>(newline + 1 - (data + header_start));
  if (len_bytes == 2 && header_len > 0xffff) return 0;
  std::string fixed(reinterpret_cast<const char*>(data), size);
  for (size_t i = 0; i < len_bytes; ++i) fixed[8 + i] = static_cast<char>((header_len >> (8 * i)) & 0xff);
  if (std::memcmp(fixed.data(), data, header_start) == 0) return 0;  // the length was right already
  check(reinterpret_cast<const uint8_t*>(fixed.data()), fixed.size());
  return 0;
}
