#include "engine/file_io.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <memory>

#include "engine/dtype.h"

namespace runway {

namespace {
const char* file_type_description(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}
struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
struct WriteFailed {
  int error;
};
}  // namespace

void write_file_atomic(const std::string& path, const char* who, const std::function<void(const ByteSink&)>& body) {
  auto fail = [&](const std::string& what) { throw Error(fmt::format("{}: '{}': {}", who, path, what)); };
  // "x" (exclusive create) guards against clobbering a stranger's file of the same name.
  static std::atomic<unsigned> counter{0};
  std::string tmp;
  std::unique_ptr<std::FILE, FileCloser> file;
  for (int attempt = 0; attempt < 100 && !file; ++attempt) {
    tmp = fmt::format("{}.tmp.{}.{}", path, static_cast<long>(::getpid()), counter++);
    file.reset(std::fopen(tmp.c_str(), "wbx"));
    if (!file && errno != EEXIST) break;
  }
  if (!file) fail(fmt::format("cannot create the temporary file '{}': {}", tmp, std::strerror(errno)));

  // From here on every failure removes the temporary file.
  std::string problem;
  try {
    body([&file](const void* data, size_t size) {
      if (size > 0 && std::fwrite(data, 1, size, file.get()) != size) throw WriteFailed{errno};
    });
    if (std::fflush(file.get()) != 0) throw WriteFailed{errno};
    if (std::fclose(file.release()) != 0) throw WriteFailed{errno};
  } catch (const WriteFailed& e) {
    problem = fmt::format("write error: {}", std::strerror(e.error));
  } catch (const std::exception& e) {
    problem = fmt::format("cannot write the data: {}", e.what());
  }
  file.reset();  // closes it if a failure skipped the fclose above
  if (!problem.empty()) {
    std::remove(tmp.c_str());
    fail(problem);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved_errno = errno;
    std::remove(tmp.c_str());
    fail(fmt::format("cannot move the temporary file into place: {}", std::strerror(saved_errno)));
  }
}

InputFile::InputFile(const std::string& path, const char* who, const char* kind) : path_(path), who_(who) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. The
  // descriptor's type is then checked on the open file itself (no race with a rename),
  // and only a regular file is read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail(fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int saved_errno = errno;
    ::close(fd);
    fail(fmt::format("cannot open: {}", std::strerror(saved_errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    if (S_ISDIR(st.st_mode)) fail(fmt::format("is a directory, not {}", kind));
    fail(fmt::format("is {}, not a regular file ({} expected)", file_type_description(st.st_mode), kind));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // a regular file: plain blocking reads
  std::FILE* f = ::fdopen(fd, "rb");
  if (!f) {
    const int saved_errno = errno;
    ::close(fd);
    fail(fmt::format("cannot open: {}", std::strerror(saved_errno)));
  }
  file_ = f;
  if (std::fseek(f, 0, SEEK_END) != 0) fail(fmt::format("cannot seek: {}", std::strerror(errno)));
  const long end_pos = std::ftell(f);
  if (end_pos < 0) fail(fmt::format("cannot determine the file size: {}", std::strerror(errno)));
  std::rewind(f);
  size_ = static_cast<uint64_t>(end_pos);
}

InputFile::~InputFile() {
  if (file_) std::fclose(static_cast<std::FILE*>(file_));
}

void InputFile::fail(const std::string& problem) const {
  throw Error(fmt::format("{}: '{}': {}", who_, path_, problem));
}

void InputFile::read_exact(void* dst, size_t n, const std::string& what) {
  if (n == 0) return;
  std::FILE* f = static_cast<std::FILE*>(file_);
  if (std::fread(dst, 1, n, f) != n)
    fail(fmt::format("read error in {}: {}", what,
                     std::ferror(f) ? std::strerror(errno) : "unexpected end of file (was it truncated while being read?)"));
}

std::string read_regular_file(const std::string& path, const char* who, const char* kind) {
  InputFile in(path, who, kind);
  std::string bytes(static_cast<size_t>(in.size()), '\0');
  in.read_exact(bytes.data(), bytes.size(), "the file");
  return bytes;
}

void MemoryInput::read_exact(void* dst, size_t n, const std::string& what) {
  if (n == 0) return;
  if (n > size_ - pos_)
    throw Error(fmt::format("{}: '{}': read error in {}: unexpected end of data ({} bytes wanted, {} left)", who_,
                            name_, what, n, size_ - pos_));
  std::memcpy(dst, data_ + pos_, n);
  pos_ += n;
}

std::string printable_excerpt(const std::string& s, size_t max_len) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\') out += "\\\\";
    else if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else if (c == '\n') out += "\\n";
    else out += fmt::format("\\x{:02x}", c);
  }
  if (s.size() > max_len) out += "...";
  return out;
}

}  // namespace runway
