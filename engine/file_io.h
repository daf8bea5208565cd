// File helpers shared by the engine's formats (.npy, safetensors) and the trainer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace runway {

// Receives bytes to append to the file being written; throws on a write error.
using ByteSink = std::function<void(const void* data, size_t size)>;

// Writes `path` atomically: `body` appends the contents through the sink into a new
// temporary file next to `path` (same folder, so the final rename is atomic), which
// then replaces `path`. On any failure, an exception from `body` included, the
// temporary file is removed, `path` is left as it was, and an Error is thrown reading
// "<who>: '<path>': <problem>".
void write_file_atomic(const std::string& path, const char* who, const std::function<void(const ByteSink&)>& body);

// A file read from start to end: opened and sized up front, read in exact pieces. Every
// failure throws an Error reading "<who>: '<path>': <problem>".
class InputFile {
 public:
  // `kind` names what a directory at `path` is not, e.g. "a .npy file".
  InputFile(const std::string& path, const char* who, const char* kind);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  uint64_t size() const { return size_; }
  // Reads exactly n bytes at the current position; `what` names them in the error.
  void read_exact(void* dst, size_t n, const std::string& what);

 private:
  [[noreturn]] void fail(const std::string& problem) const;
  std::string path_;
  const char* who_;
  void* file_ = nullptr;  // std::FILE*
  uint64_t size_ = 0;
};

// A printable excerpt of untrusted bytes for error messages (escapes, at most max_len).
std::string printable_excerpt(const std::string& s, size_t max_len = 80);

}  // namespace runway
