// The data side of training byte-level language models: a text corpus split into
// train / validation bytes, random and sequential windows over it, and two synthetic
// tasks that probe long-range retrieval (passkey) and associative recall (MQAR style).
//
// Every random choice takes an explicit runway::Generator, so a seed (or a saved
// Generator::State) reproduces every batch exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"

namespace runway::nn {

// ============================================================================
// Corpus
// ============================================================================

struct ByteCorpus {
  std::vector<uint8_t> train, val;
  std::vector<std::string> files;      // every document used, in load order (sorted)
  std::vector<std::string> val_files;  // the documents that went to val (document split only)
  bool split_by_documents = false;     // false: the byte split was used
};

// Loads a corpus of raw bytes from `path`, a text file or a folder.
//
// Which files (folder): the folder is walked recursively without following symlinked
// folders, and a file is kept when all of these hold:
//   * it is a regular file and not a symlink (fortunes' `x.u8 -> x` links are skipped);
//   * its name does not end in ".dat" (strfile's binary indexes) nor ".u8" (the UTF-8
//     duplicates of the fortune files, whether symlink or copy);
//   * its name does not start with '.' (hidden files; hidden folders are not entered);
//   * it is not empty and contains no NUL byte (binary files are skipped).
// Kept files are sorted by their full path string (byte-wise), so the order does not
// depend on the file system, and their bytes are concatenated as they are (no separator).
// A path naming a single file is loaded as it is (no filtering; empty is an error).
//
// Split, with f = val_fraction in (0, 1):
//   * Document split (a folder with at least two kept files): each file is a document.
//     Going through the documents in sorted order with n_i bytes each, V the val bytes
//     and S the total bytes before document i, document i goes to val iff
//         V + n_i / 2 < f * (S + n_i)
//     i.e. iff adding it brings V closer to f times the bytes seen so far. The rule
//     depends only on the sorted order and the sizes, and |V - f * N| never exceeds
//     half the largest document (N the corpus bytes). train and val are the
//     concatenations (in sorted order) of their documents.
//   * Byte split (a single file, a folder with one kept file, or when the document rule
//     leaves either side empty; for f = 0.1 the first val document must be under a
//     quarter of the bytes before it, so a few documents of similar size all go to
//     train): the last floor(f * N) bytes of the concatenation (N bytes) are val, the
//     rest train.
// Both splits must be non-empty: the byte split needs floor(f * N) >= 1, i.e. at least
// ceil(1 / f) bytes (10 bytes for f = 0.1).
//
// Errors (runway::Error, naming the path): missing path, unreadable file or folder,
// "... is empty", "no text files under ...", "corpus too small", f outside (0, 1).
ByteCorpus load_corpus(const std::string& path, double val_fraction = 0.1);

// ============================================================================
// Windows
// ============================================================================

// Random training windows of length T over a byte vector (the sampler keeps a copy).
class WindowSampler {
 public:
  // Error when T < 1 or the data is shorter than T + 1 bytes.
  WindowSampler(std::vector<uint8_t> bytes, int64_t T);

  // Draws `batch` offsets, row b from the b-th call gen.below(n - T), so each offset o
  // is uniform in [0, n - T - 1], and fills row-major (batch, T):
  //   inputs[b*T + t] = bytes[o + t],  targets[b*T + t] = bytes[o + t + 1].
  // The vectors are resized; `offsets` (optional) receives the batch offsets.
  void next_batch(int64_t batch, Generator& gen, std::vector<int64_t>* inputs,
                  std::vector<int64_t>* targets, std::vector<int64_t>* offsets = nullptr) const;

  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  int64_t window() const { return T_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
  int64_t T_;
};

// One evaluation window of length T over n bytes: inputs bytes[offset + t] and targets
// bytes[offset + t + 1] for t in [0, T); only targets t >= score_from are scored.
struct EvalWindow {
  int64_t offset = 0;
  int64_t score_from = 0;
};

// Strided evaluation windows (sliding window with stride S, 1 <= S <= T) over n bytes,
// which scores every target position 1 .. n-1 exactly once:
//   * window k starts at offset k*S for every k with k*S + T + 1 <= n;
//   * window 0 scores all its T targets (score_from = 0); every later window scores
//     only its last S targets (score_from = T - S), the ones the previous window did
//     not reach, so each scored target has at least T - S bytes of context (except in
//     window 0);
//   * tail: when the last of those windows ends before the data does (r > 0 target
//     positions left over), one more window starts at n - T - 1 and scores only its
//     last r targets (score_from = T - r).
// Error when T < 1, S outside [1, T] or n < T + 1.
std::vector<EvalWindow> strided_windows(int64_t n, int64_t T, int64_t stride);

// Non-overlapping windows: strided_windows(n, T, T). Windows start at 0, T, 2T, ...
// and score all their targets; only the tail window (if any) overlaps its predecessor
// and scores just the r left-over targets.
std::vector<EvalWindow> sequential_windows(int64_t n, int64_t T);

// Fills row-major (windows.size(), T) inputs/targets from `bytes` for the given windows;
// targets before a window's score_from are set to ignore_index (cross_entropy's
// default), so the mean loss covers exactly the scored targets.
void fill_windows(const std::vector<uint8_t>& bytes, int64_t T,
                  const std::vector<EvalWindow>& windows, std::vector<int64_t>* inputs,
                  std::vector<int64_t>* targets, int64_t ignore_index = -100);

// ============================================================================
// Passkey retrieval
// ============================================================================

// The fixed pieces of a passkey document ("NNNNN" marks the key in the needle).
extern const char* const kPasskeyFiller;    // "The grass is green. ... There and back again. "
// The key sits between '<' and '>', and the question ends with '<': a byte that occurs
// only right before a key, so a single-byte induction head can find where the key starts
// (with a space there, "key is " would have to be matched in full; docs/results.md).
extern const char* const kPasskeyNeedle;    // "The pass key is <NNNNN>. Remember it. <NNNNN> is the pass key. "
extern const char* const kPasskeyQuestion;  // "What is the pass key? The pass key is <"
constexpr int64_t kPasskeyDigits = 5;

// Minimum length of a passkey document: needle + question + answer, no filler (107).
int64_t passkey_min_length();

struct PasskeyExample {
  std::string text;    // exactly `length` bytes: prompt + answer
  std::string prompt;  // everything before the answer digits (length - 5 bytes)
  std::string answer;  // the 5 key digits (the last 5 bytes of text)
  int64_t needle_offset = 0;  // where the needle sentence starts in text
};

// A document of exactly `length` bytes:
//   filler[0:p] + needle + filler[p:F] + question + answer
// where filler is kPasskeyFiller repeated and cut to F = length - passkey_min_length()
// bytes, and p is the word boundary of the filler (0, F, or a position just after a
// space) nearest to depth * F (ties: the smaller), so depth 0 puts the needle first and
// depth 1 right before the question. The key is 5 digits, each gen.below(10) in order
// (a leading 0 is allowed, so all 100000 keys are equally likely); it appears twice in
// the needle and once as the answer. Error when length < passkey_min_length() (naming
// the minimum) or depth is outside [0, 1].
PasskeyExample make_passkey(int64_t length, double depth, Generator& gen);

// Starts rows of a row-major (batch, T) training batch with passkey documents (row b's
// T + 1 byte window is w[0] = inputs[b*T], w[t + 1] = targets[b*T + t]). For each row in
// order: when fraction > 0, u = gen.uniform01(); the row is replaced iff u < fraction,
// with depth = gen.uniform01(), length = passkey_min_length() + gen.below(T + 2 -
// passkey_min_length()) (uniform in [passkey_min_length(), T + 1]) and then the key from
// gen; the document fills w[0:length] and the rest of the window keeps its bytes. The
// length varies so that the answer's position does: with every document T + 1 bytes
// long, a model learned to copy from a fixed position and failed on any other length
// (100% at T + 1, 0% at T; docs/results.md). fraction 0 draws nothing. Returns the
// replaced rows. Error when T + 1 is below passkey_min_length(), fraction is outside
// [0, 1] or the vectors are not batch * T.
std::vector<int64_t> mix_passkey(std::vector<int64_t>& inputs, std::vector<int64_t>& targets,
                                 int64_t batch, int64_t T, double fraction, Generator& gen);

// ============================================================================
// Associative recall (MQAR style)
// ============================================================================

struct RecallExample {
  std::string text;                    // the full byte sequence
  std::vector<std::string> keys;       // pair i's key (2 lowercase letters, unique)
  std::vector<std::string> values;     // pair i's value (2 digits)
  std::vector<int64_t> queries;        // query j asks pair queries[j]
  std::vector<int64_t> value_positions;  // indices in text of the scored value bytes
};

// Format (6 bytes per pair and per query, 6 * (P + Q) + 1 bytes in all):
//   "ab=17 cd=42 ef=03 |cd=42 ab=17 "
//   context: for each pair i: key_i '=' value_i ' '
//   then '|'
//   queries: for each query j: key '=' value ' ' of pair queries[j]
// Keys are 2 lowercase letters, distinct within an example (drawn in order, each letter
// gen.below(26), redrawn on a repeat); values are 2 digits, each gen.below(10), repeats
// allowed. The queried pairs are distinct: the first Q entries of a Fisher-Yates shuffle
// of the pairs (i from 0: swap i with i + gen.below(P - i)). value_positions holds, per
// query, the text indices of its 2 value digits (2 * Q entries, in query order): in a
// (inputs = text[:-1], targets = text[1:]) pair, the byte at text index p is target p - 1.
// Error when P is outside [1, 676] or Q outside [1, P].
RecallExample make_recall(int64_t num_pairs, int64_t num_queries, Generator& gen);

// Length of a recall example: 6 * (num_pairs + num_queries) + 1.
int64_t recall_length(int64_t num_pairs, int64_t num_queries);

// Like mix_passkey for recall: a replaced row keeps its window's first bytes and its
// last recall_length(P, Q) bytes of the T + 1 byte window (window bytes
// w[0] = inputs[b*T], w[t + 1] = targets[b*T + t]) become a recall example; the row
// is then rebuilt as inputs = w[0:T], targets = w[1:T+1]. Per row: u = gen.uniform01()
// (when fraction > 0), replaced iff u < fraction, then make_recall's draws. Returns the
// replaced rows. Error when recall_length(P, Q) > T + 1, fraction is outside [0, 1] or
// the vectors are not batch * T.
std::vector<int64_t> mix_recall(std::vector<int64_t>& inputs, std::vector<int64_t>& targets,
                                int64_t batch, int64_t T, double fraction, int64_t num_pairs,
                                int64_t num_queries, Generator& gen);

}  // namespace runway::nn
