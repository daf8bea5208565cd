// A run folder on disk: its checkpoints, written so that a crash at any moment leaves a
// folder that resumes, and the lock that gives the folder one writer.
//
// Layout (docs/reliability.md):
//   RUN/config.json              the resolved training config (written once, at the start)
//   RUN/metrics.jsonl            one JSON object per step, cut back to the checkpoint on resume
//   RUN/.lock                    flock()ed by the training that owns the folder; holds its pid
//   RUN/stop.json                how the last training session ended: {"step": N, "reason": R}
//   RUN/checkpoints/step-00000120/{model.safetensors, optimizer.safetensors, state.json, manifest.json}
//   RUN/checkpoints/step-00000240/...   the newest two complete checkpoints are kept
// Runs written before checkpoints/ existed keep model.safetensors, optimizer.safetensors and
// state.json at the top of RUN ("flat" layout); they are still read.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace runway::nn {

// Where a complete checkpoint of a run lies.
struct CheckpointLocation {
  std::string dir;    // the folder holding model.safetensors, optimizer.safetensors, state.json
  int64_t step = -1;  // from the manifest; -1 for the flat layout (its files carry the step)
  bool flat = false;  // the layout of runs written before checkpoints/ existed
};

// The newest complete checkpoint of run folder `run_dir`: the checkpoints/step-N folder
// with the highest N whose manifest.json parses and whose every listed file exists with
// the listed size and checksum; else, when there is no checkpoints/step-N folder at all,
// the flat layout if RUN/model.safetensors exists; else nothing. Step folders that fail
// the check are skipped, and each is described in *skipped ("checkpoints/step-N: why").
std::optional<CheckpointLocation> find_checkpoint(const std::string& run_dir, std::vector<std::string>* skipped = nullptr);

// find_checkpoint, or an Error naming run_dir and why no checkpoint qualifies.
CheckpointLocation require_checkpoint(const std::string& run_dir);

// One file of a checkpoint: `write` creates it at the path it is given.
struct CheckpointFile {
  std::string name;
  std::function<void(const std::string& path)> write;
};

// Writes the checkpoint of `step` as one unit: the files go into a new folder
// RUN/checkpoints/.tmp-step-N-PID, each file fsynced, then manifest.json (each file's
// size and checksum64_file), the folder fsynced, renamed to checkpoints/step-N and
// the parent fsynced. Only then are older checkpoints pruned (the newest `keep` complete
// ones stay) and flat-layout files of an older version removed. A complete step-N that
// already exists is kept as it is (the same step of a deterministic run holds the same
// state). On a failure (full disk, ...) the temporary folder is removed, the previous
// checkpoints are untouched, and an Error names the folder and the problem.
void commit_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files, int keep = 2);

// Removes what an interrupted save leaves behind: checkpoints/.tmp-* and .trash-*
// folders and the temporary files of write_file_atomic ("NAME.tmp.PID.N") at the top of
// the run folder. Call only while holding the run's lock.
void clean_interrupted_saves(const std::string& run_dir);

// Writes RUN/stop.json atomically: {"step": step, "reason": reason}, reason "done" (the
// run reached its steps) or the signal that stopped it ("SIGINT", "SIGTERM"), after the
// checkpoint of that step is saved. The record a script (or a test) can rely on: the
// closing line on stdout can be lost, e.g. when mpirun stops forwarding a rank's output
// while it tears a job down after Ctrl-C.
void write_stop_record(const std::string& run_dir, int64_t step, const std::string& reason);
// Removes RUN/stop.json, at the start of a session: a session that dies (SIGKILL, a crash,
// a diverged loss) then leaves no record rather than the previous session's. Call only
// while holding the run's lock.
void clear_stop_record(const std::string& run_dir);

// Cuts RUN/metrics.jsonl back to the lines with "step" <= step (a torn last line is
// dropped too), so that a resumed run does not log its steps twice. No file: nothing.
void truncate_metrics(const std::string& path, int64_t step);

// An exclusive flock() on RUN/.lock for as long as the object lives, with this process's
// pid written in the file. A second holder gets an Error at once naming the holder's pid.
class RunLock {
 public:
  explicit RunLock(const std::string& run_dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

// The name of the lock file in a run folder.
inline const char* run_lock_name() { return ".lock"; }

// A test hook: with RUNWAY_FAULT_INJECT_SAVE=n in the environment, the n-th call in this
// process (counting from 1 over every save) kills the process with SIGKILL, as an OOM
// kill or a power cut would stop it; `after` names what was just done (printed first).
void save_fault_point(const char* after);

// fsync of a file by path (its data reaches the disk), or an Error naming it.
void fsync_file(const std::string& path);

// A 64-bit checksum of a file's bytes (throws an Error naming the file when it cannot be
// read): FNV-1a's xor-then-multiply taken one 8-byte little-endian word at a time (about
// 3 times byte-wise FNV-1a's speed, docs/reliability.md), each multiply followed by an
// xorshift so that high bits reach the low ones, and the length mixed in at the end. Each
// step is a bijection of the state for a given word, so a change confined to one word
// always changes the checksum. It guards against torn and corrupted files, not against an
// adversary. Written here because no hashing library is linked into runway.
uint64_t checksum64_file(const std::string& path);

}  // namespace runway::nn
