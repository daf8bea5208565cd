#include "nn/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/dtype.h"
#include "engine/file_io.h"

namespace runway::nn {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kManifestFormat = "runway-checkpoint";
constexpr const char* kChecksumName = "fnv1a64-words";  // checksum64_file
// The files of the flat layout (runs written before checkpoints/ existed).
const char* const kFlatFiles[] = {"model.safetensors", "optimizer.safetensors", "state.json"};

std::string step_folder_name(int64_t step) { return fmt::format("step-{:08}", step); }

// The step of a folder named step-N (N: digits only), or -1.
int64_t parse_step_folder(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step-") != 0) return -1;
  if (name.size() > 5 + 18) return -1;  // beyond int64
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// fsync a file or a folder by path; a folder's fsync makes the names in it (renames,
// new entries) durable.
void fsync_path(const fs::path& path, bool folder) {
  const int fd = ::open(path.c_str(), (folder ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("checkpoint: cannot open '{}' to fsync it: {}", path.string(), std::strerror(errno)));
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(fmt::format("checkpoint: fsync of '{}' failed: {}", path.string(), std::strerror(e)));
  }
  ::close(fd);
}

// Why the step folder is not a complete checkpoint of `step` ("" when it is). With
// checksums false, only the manifest and the sizes are checked (enough to tell a
// complete folder from an interrupted one, cheaply, when pruning).
std::string checkpoint_problem(const fs::path& dir, int64_t step, bool checksums) {
  std::error_code ec;
  const fs::path manifest_path = dir / kManifest;
  std::ifstream in(manifest_path, std::ios::binary);
  if (!in) return "no manifest.json (an interrupted save)";
  std::stringstream text;
  text << in.rdbuf();
  json manifest;
  try {
    manifest = json::parse(text.str());
    if (manifest.at("format").get<std::string>() != kManifestFormat) return "manifest.json: not a runway checkpoint manifest";
    if (manifest.at("step").get<int64_t>() != step)
      return fmt::format("manifest.json is for step {}, not {}", manifest.at("step").get<int64_t>(), step);
    const json& files = manifest.at("files");
    if (!files.is_array() || files.empty()) return "manifest.json lists no files";
    for (const json& f : files) {
      const std::string name = f.at("name").get<std::string>();
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        return fmt::format("manifest.json: bad file name '{}'", printable_excerpt(name));
      const uint64_t bytes = f.at("bytes").get<uint64_t>();
      const fs::path path = dir / name;
      const uintmax_t actual = fs::file_size(path, ec);
      if (ec) return fmt::format("{} is missing", name);
      if (actual != bytes) return fmt::format("{} has {} bytes, the manifest says {}", name, actual, bytes);
      if (checksums) {
        const std::string want = f.at("checksum").get<std::string>();
        const std::string got = fmt::format("{:016x}", checksum64_file(path.string()));
        if (got != want) return fmt::format("{} has checksum {}, the manifest says {} (the file is corrupt)", name, got, want);
      }
    }
  } catch (const json::exception& e) {
    return fmt::format("manifest.json is not valid: {}", e.what());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The step folders under RUN/checkpoints, newest first.
std::vector<std::pair<int64_t, fs::path>> step_folders(const fs::path& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  const fs::path root = run_dir / "checkpoints";
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const int64_t step = parse_step_folder(entry.path().filename().string());
    if (step >= 0 && entry.is_directory(ec)) out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

// Removes a folder by first renaming it to a dot name (one atomic step), so that a crash
// halfway through the removal leaves a leftover that clean_interrupted_saves removes,
// never a half-deleted step folder.
void remove_folder_safely(const fs::path& dir) {
  const fs::path trash = dir.parent_path() / fmt::format(".trash-{}-{}", dir.filename().string(), ::getpid());
  std::error_code ec;
  fs::remove_all(trash, ec);
  fs::rename(dir, trash, ec);
  if (ec) throw Error(fmt::format("checkpoint: cannot remove '{}': {}", dir.string(), ec.message()));
  fs::remove_all(trash, ec);
}

}  // namespace

void fsync_file(const std::string& path) { fsync_path(path, false); }

uint64_t checksum64_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(fmt::format("cannot read '{}': {}", path, std::strerror(errno)));
  constexpr uint64_t kPrime = 0x100000001b3ull;  // FNV-1a's 64-bit prime
  uint64_t h = 0xcbf29ce484222325ull, total = 0;  // and its offset basis
  std::vector<unsigned char> buffer(1 << 20);     // a multiple of 8: only the last read has a tail
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) {
    total += n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t word;
      std::memcpy(&word, buffer.data() + i, 8);
      h = (h ^ word) * kPrime;
      h ^= h >> 32;
    }
    if (i < n) {
      uint64_t word = 0;
      std::memcpy(&word, buffer.data() + i, n - i);
      h = (h ^ word) * kPrime;
      h ^= h >> 32;
    }
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw Error(fmt::format("read error in '{}'", path));
  return ((h ^ total) * kPrime) ^ (h >> 29);  // the length too: a zero tail is not a zero word
}

void save_fault_point(const char* after) {
  static const long target = [] {
    const char* v = std::getenv("RUNWAY_FAULT_INJECT_SAVE");
    return v ? std::strtol(v, nullptr, 10) : 0L;
  }();
  static long count = 0;
  if (target <= 0 || ++count != target) return;
  std::fprintf(stderr, "RUNWAY_FAULT_INJECT_SAVE=%ld: killing this process (SIGKILL) after %s\n", target, after);
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
  std::_Exit(137);  // not reached
}

std::optional<CheckpointLocation> find_checkpoint(const std::string& run_dir, std::vector<std::string>* skipped) {
  const auto folders = step_folders(run_dir);
  for (const auto& [step, dir] : folders) {
    const std::string problem = checkpoint_problem(dir, step, true);
    if (problem.empty()) return CheckpointLocation{dir.string(), step, false};
    if (skipped) skipped->push_back(fmt::format("checkpoints/{}: {}", dir.filename().string(), problem));
  }
  std::error_code ec;
  if (folders.empty() && fs::exists(fs::path(run_dir) / "model.safetensors", ec))
    return CheckpointLocation{run_dir, -1, true};
  return std::nullopt;
}

CheckpointLocation require_checkpoint(const std::string& run_dir) {
  std::vector<std::string> skipped;
  if (auto found = find_checkpoint(run_dir, &skipped)) return *found;
  std::string why;
  for (const auto& s : skipped) why += "; " + s;
  throw Error(fmt::format("no complete checkpoint in '{}'{}", run_dir,
                          skipped.empty() ? ": no checkpoints/step-N folder and no model.safetensors (was the run "
                                            "stopped before its first save?)"
                                          : why));
}

void commit_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files, int keep) {
  const fs::path run(run_dir), root = run / "checkpoints", final_dir = root / step_folder_name(step);
  std::error_code ec;
  if (!fs::is_directory(root)) {
    fs::create_directories(root, ec);
    if (ec) throw Error(fmt::format("checkpoint: cannot create '{}': {}", root.string(), ec.message()));
    fsync_path(run, true);
  }
  if (!fs::exists(final_dir) || !checkpoint_problem(final_dir, step, true).empty()) {
    const fs::path tmp = root / fmt::format(".tmp-{}-{}", step_folder_name(step), ::getpid());
    try {
      fs::remove_all(tmp);
      fs::create_directory(tmp);
      save_fault_point("creating the temporary checkpoint folder");
      json manifest{{"format", kManifestFormat}, {"step", step}, {"checksum", kChecksumName}, {"files", json::array()}};
      for (const CheckpointFile& f : files) {
        const fs::path path = tmp / f.name;
        f.write(path.string());
        fsync_path(path, false);
        manifest["files"].push_back({{"name", f.name},
                                     {"bytes", fs::file_size(path)},
                                     {"checksum", fmt::format("{:016x}", checksum64_file(path.string()))}});
        save_fault_point(f.name.c_str());
      }
      const std::string text = manifest.dump(2) + "\n";
      write_file_atomic((tmp / kManifest).string(), "checkpoint",
                        [&](const ByteSink& sink) { sink(text.data(), text.size()); });
      fsync_path(tmp / kManifest, false);
      save_fault_point("manifest.json");
      fsync_path(tmp, true);
      save_fault_point("fsync of the temporary folder");
      if (fs::exists(final_dir)) remove_folder_safely(final_dir);  // an incomplete or corrupt folder of this step
      fs::rename(tmp, final_dir);
      save_fault_point("renaming the temporary folder into place");
      fsync_path(root, true);
      save_fault_point("fsync of checkpoints/");
    } catch (const std::exception& e) {
      fs::remove_all(tmp, ec);
      throw Error(fmt::format("saving the checkpoint of step {} into '{}' failed (the previous checkpoints are kept): {}",
                              step, root.string(), e.what()));
    }
  }
  // Prune: the newest `keep` complete checkpoints stay; older ones and broken ones go.
  int complete = 0;
  for (const auto& [s, dir] : step_folders(run)) {
    // A newer folder (only a damaged one, which the resume skipped, can be there) is left
    // for the save of its step to replace, and does not count as one to keep.
    if (s > step) continue;
    if (complete < keep && checkpoint_problem(dir, s, false).empty()) {
      ++complete;
      continue;
    }
    remove_folder_safely(dir);
    save_fault_point("pruning an old checkpoint");
  }
  // The flat layout of an older version is superseded by the checkpoint just written.
  bool removed_flat = false;
  for (const char* name : kFlatFiles) removed_flat |= fs::remove(run / name, ec);
  if (removed_flat) {
    fsync_path(run, true);
    save_fault_point("removing the flat-layout files");
  }
}

void clean_interrupted_saves(const std::string& run_dir) {
  std::error_code ec;
  const fs::path run(run_dir), root = run / "checkpoints";
  if (fs::is_directory(root, ec))
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".tmp-", 0) == 0 || name.rfind(".trash-", 0) == 0) fs::remove_all(entry.path(), ec);
    }
  // write_file_atomic's temporary files: NAME.tmp.PID.N
  for (const auto& entry : fs::directory_iterator(run, ec)) {
    const std::string name = entry.path().filename().string();
    const size_t at = name.find(".tmp.");
    if (at == std::string::npos || at == 0 || !entry.is_regular_file(ec)) continue;
    const std::string rest = name.substr(at + 5);
    const size_t dot = rest.find('.');
    auto digits = [](const std::string& s) {
      return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (dot != std::string::npos && digits(rest.substr(0, dot)) && digits(rest.substr(dot + 1))) fs::remove(entry.path(), ec);
  }
}

void write_stop_record(const std::string& run_dir, int64_t step, const std::string& reason) {
  const std::string text = json{{"step", step}, {"reason", reason}}.dump() + "\n";
  write_file_atomic(run_dir + "/stop.json", "stop record", [&](const ByteSink& sink) { sink(text.data(), text.size()); });
}

void clear_stop_record(const std::string& run_dir) {
  std::error_code ec;
  fs::remove(run_dir + "/stop.json", ec);
  if (ec) throw Error(fmt::format("stop record: '{}/stop.json': cannot remove it: {}", run_dir, ec.message()));
}

void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  std::string kept, line;
  bool changed = false;
  while (std::getline(in, line)) {
    bool keep = false;
    if (!in.eof()) {  // a last line without its newline is torn
      try {
        const json j = json::parse(line);
        keep = j.at("step").get<int64_t>() <= step;
      } catch (const json::exception&) {
      }
    }
    if (keep) kept += line + "\n";
    else changed = true;
  }
  in.close();
  if (!changed) return;
  write_file_atomic(path, "metrics", [&](const ByteSink& sink) { sink(kept.data(), kept.size()); });
}

RunLock::RunLock(const std::string& run_dir) {
  const std::string path = (fs::path(run_dir) / run_lock_name()).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(fmt::format("cannot open the lock file '{}': {}", path, std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    char buffer[32] = {};
    const ssize_t n = ::pread(fd_, buffer, sizeof(buffer) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    std::string holder = n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    if (e == EWOULDBLOCK)
      throw Error(fmt::format("run folder '{}' is in use by another training (pid {}); wait for it to end or stop it "
                              "(the lock is {})",
                              run_dir, holder.empty() ? "unknown" : printable_excerpt(holder), path));
    throw Error(fmt::format("cannot lock '{}': {}", path, std::strerror(e)));
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(fmt::format("cannot write the lock file '{}': {}", path, std::strerror(e)));
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock; the file stays (removing it would race a new holder)
}

}  // namespace runway::nn
