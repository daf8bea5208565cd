// File helpers shared by the engine's formats (.npy, safetensors) and the trainer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace runway {

// Receives bytes to append to the file being written; throws on a write error.
using ByteSink = std::function<void(const void* data, size_t size)>;

// Writes `path` atomically: `body` appends the contents through the sink into a new
// temporary file next to `path` (same folder, so the final rename is atomic), which
// then replaces `path`. On any failure, an exception from `body` included, the
// temporary file is removed, `path` is left as it was, and an Error is thrown reading
// "<who>: '<path>': <problem>".
void write_file_atomic(const std::string& path, const char* who, const std::function<void(const ByteSink&)>& body);

// A regular file read from start to end: opened and sized up front, read in exact
// pieces. A directory, FIFO, device or socket is refused at once (never blocks on a
// FIFO without a writer). Every failure throws an Error reading "<who>: '<path>': <problem>".
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

// The whole contents of the regular file at `path`, read through InputFile (so a FIFO,
// a device or a folder is refused without blocking, with the same errors).
std::string read_regular_file(const std::string& path, const char* who, const char* kind);

// Bytes already in memory, read from start to end with InputFile's interface, so that a
// format reader written against it parses a buffer as it parses a file (the fuzzers do).
// Every failure throws an Error reading "<who>: '<name>': <problem>".
class MemoryInput {
 public:
  MemoryInput(const void* data, size_t size, const char* who, std::string name)
      : data_(static_cast<const unsigned char*>(data)), size_(size), who_(who), name_(std::move(name)) {}
  uint64_t size() const { return size_; }
  void read_exact(void* dst, size_t n, const std::string& what);

 private:
  const unsigned char* data_;
  size_t size_;
  size_t pos_ = 0;
  const char* who_;
  std::string name_;
};

// A printable excerpt of untrusted bytes for error messages (escapes, at most max_len).
std::string printable_excerpt(const std::string& s, size_t max_len = 80);

}  // namespace runway
