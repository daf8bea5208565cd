// libFuzzer harness for the safetensors reader (engine/safetensors.h), on bytes in memory.
//
// Contract under test: any input either parses into tensors whose data tiles the input's
// data section, or throws a runway::Error. Anything else (another exception, a crash, a
// sanitizer report, a leak, a hang, an allocation larger than the input justifies) is a
// finding.
//
// The 8-byte header length makes nearly every mutation that changes the header's length
// (a digit more in a shape, a key renamed) fail on the length alone, so each input is also
// read a second way: when it has a NUL byte after the first 8 (JSON has none), the bytes
// up to that NUL are the header and those after it the data, and the length field is set
// to match. Seeds of that form are named nul_*.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "engine/safetensors.h"
#include "fuzz/verbose.h"

namespace {

void check(const uint8_t* data, size_t size) {
  runway::SafetensorsFile file;
  try {
    file = runway::read_safetensors_bytes(data, size, "fuzz.safetensors");
  } catch (const runway::Error& e) {
    runway::fuzz::report(e.what());
    return;  // rejected with the reader's own error: the expected outcome for garbage
  }
  // Accepted: names are unique and not the metadata key, the tensors' bytes fit in the
  // input after the 8-byte length, and every byte is readable (ASan checks the reads).
  std::set<std::string> names;
  size_t total = 0;
  unsigned sum = 0;
  for (const auto& [name, t] : file.tensors) {
    if (name == "__metadata__" || !names.insert(name).second || !t.is_contiguous()) std::abort();
    const size_t bytes = static_cast<size_t>(t.numel()) * runway::dtype_size(t.dtype());
    total += bytes;
    const unsigned char* p = static_cast<const unsigned char*>(t.raw_data());
    for (size_t i = 0; i < bytes; ++i) sum += p[i];
  }
  if (size < 8 || total > size - 8) std::abort();
  runway::fuzz::report("accepted");
  volatile unsigned sink = sum;
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(data, size);
  if (size <= 8) return 0;
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data + 8, 0, size - 8));
  if (!nul) return 0;
  const uint64_t header_len = static_cast<uint64_t>(nul - (data + 8));
  std::string fixed(8, '\0');
  for (int i = 0; i < 8; ++i) fixed[i] = static_cast<char>((header_len >> (8 * i)) & 0xff);
  fixed.append(reinterpret_cast<const char*>(data + 8), header_len);
  fixed.append(reinterpret_cast<const char*>(nul + 1), size - 8 - header_len - 1);
  check(reinterpret_cast<const uint8_t*>(fixed.data()), fixed.size());
  return 0;
}
