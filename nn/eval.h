// Evaluating a byte-level GPT: bits per byte over held-out bytes at several context
// lengths (the length-extrapolation curve), passkey retrieval accuracy over a grid of
// document lengths and needle depths, and associative recall (MQAR style) accuracy.
//
// Everything runs under NoGradGuard (no tape is recorded) on the model's device and
// is deterministic: windows are chosen by a fixed rule and the synthetic tasks draw
// from a Generator seeded by the caller.
//
// A model with learned positions has exactly config.seq_len position rows, so inputs
// longer than that cannot be evaluated; those measurements come back marked not
// available (available = false, with the reason in `note`) instead of throwing, so a
// sweep over lengths reports every length it can.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/gpt.h"
#include "nn/train.h"

namespace runway::nn {

// ============================================================================
// Bits per byte
// ============================================================================

struct EvalCurvePoint {
  int64_t T = 0;               // context length (window length) evaluated
  int64_t stride = 0;          // the stride used (T for non-overlapping windows)
  double bits_per_byte = 0;    // mean next-byte cross-entropy in bits over the scored targets
  int64_t windows = 0;         // windows used
  int64_t windows_total = 0;   // windows the rule produced before subsampling
  int64_t targets = 0;         // targets scored (the denominator)
  bool available = true;
  std::string note;            // why not available (empty when available)
};

// Bits per byte of next-byte prediction over `bytes` with windows of length T:
//   * windows: strided_windows(n, T, stride), or sequential_windows(n, T) (non-
//     overlapping) when stride == 0; every target position 1..n-1 is scored exactly once
//     (see nn/data.h);
//   * when there are more than max_windows of them, max_windows are kept, evenly
//     spread: window floor(i * N / max_windows) for i = 0..max_windows-1 (N windows);
//     max_windows <= 0 keeps them all;
//   * batches of up to `batch` windows go through model.forward (fill_windows, unscored
//     targets = -100); the loss sum is exact: each batch's mean cross-entropy times its
//     scored-target count, accumulated in double;
//   * bits_per_byte = (sum of losses) / targets / ln 2.
// Not available (no throw): learned positions with T > config.seq_len, or fewer than
// T + 1 bytes. Errors (runway::Error): T < 1, stride outside [0, T], batch < 1.
EvalCurvePoint bits_per_byte(const GPT& model, const std::vector<uint8_t>& bytes, int64_t T, int64_t stride = 0,
                             int64_t max_windows = 0, int64_t batch = 8);

// ============================================================================
// Passkey retrieval
// ============================================================================

struct PasskeyCell {
  int64_t length = 0;      // document length in bytes (prompt + 5 answer digits)
  double depth = 0;        // needle depth in [0, 1]
  int64_t trials = 0;      // documents evaluated
  int64_t correct = 0;     // documents whose 5 greedy digits all match the key
  int64_t digits_correct = 0;  // matching digits over all documents (of 5 * trials)
  double accuracy = 0;         // correct / trials
  double digit_accuracy = 0;   // digits_correct / (5 * trials)
  std::vector<std::string> answers;      // the keys, per trial
  std::vector<std::string> predictions;  // the 5 greedily decoded bytes, per trial
  bool available = true;
  std::string note;
};

// `trials` documents make_passkey(length, depth, gen) with gen = Generator(seed) (so a
// seed fixes the keys, and the same seed gives the same keys at every length and
// depth). The answer is decoded greedily from the prompt: for d = 0..4 the batch of
// (prompt + d decoded bytes) goes through model.forward and the argmax of the last
// position's logits (ties: the lowest byte) is appended. A trial is correct when all
// 5 decoded bytes equal the key. Trials go through the model `batch` at a time (0: all
// at once).
// Not available: length < passkey_min_length(), or learned positions with
// length - 1 > config.seq_len (the last decoding step reads length - 1 bytes).
// Errors: trials < 1, depth outside [0, 1], batch < 0.
PasskeyCell passkey_accuracy(const GPT& model, int64_t length, double depth, int64_t trials, uint64_t seed,
                             int64_t batch = 0);

// The needle depths of the default grid: 0, 0.25, 0.5, 0.75, 1.
const std::vector<double>& default_passkey_depths();

// ============================================================================
// Associative recall
// ============================================================================

struct RecallResult {
  int64_t num_pairs = 0, num_queries = 0;
  int64_t trials = 0;
  int64_t length = 0;   // model input length: recall_length(P, Q) - 1
  int64_t scored = 0;   // value bytes scored: 2 * num_queries * trials
  int64_t correct = 0;  // value bytes whose argmax prediction was right
  double accuracy = 0;  // correct / scored
  bool available = true;
  std::string note;
};

// Teacher-forced recall: `trials` examples make_recall(P, Q, gen), gen = Generator(seed);
// each goes through model.forward as inputs text[:-1]; the value byte at text index p
// (every entry of value_positions) counts as correct when the argmax of the logits at
// position p - 1 equals it. Trials are batched `batch` at a time (0: all at once).
// Not available: learned positions with recall_length(P, Q) - 1 > config.seq_len.
// Errors: trials < 1, batch < 0, and make_recall's (P outside [1, 676], Q outside [1, P]).
RecallResult recall_eval(const GPT& model, int64_t num_pairs, int64_t num_queries, int64_t trials, uint64_t seed,
                         int64_t batch = 0);

// The default recall size for training length L: k = max(2, floor(L / 6)) pair-or-query
// slots, Q = max(1, floor(2k / 5)), P = k - Q (P capped at 676 and Q at P), so the
// input (6 (P + Q) bytes) fits in L when L >= 12. L = 64: P = 6, Q = 4.
void default_recall_size(int64_t L, int64_t* num_pairs, int64_t* num_queries);

// ============================================================================
// JSON
// ============================================================================

// The numbers of the structs above ("note" instead of them when not available); a
// passkey cell also lists its keys ("answers") and its decoded bytes as byte values
// ("prediction_bytes", since a model may decode bytes that are not valid UTF-8).
nlohmann::json to_json(const EvalCurvePoint& p);
nlohmann::json to_json(const PasskeyCell& c);
nlohmann::json to_json(const RecallResult& r);

// ============================================================================
// The evaluation suite (runway eval, and the studies behind runway demo / compare)
// ============================================================================

struct EvalSuiteOptions {
  std::vector<int64_t> lengths;          // bits per byte; empty: L, 2L, 4L, 8L
  int64_t stride = 0;                    // clamped to each length
  int64_t max_windows = 0;               // per length (0: all)
  int64_t batch_size = 8;                // windows or trials per forward pass
  int64_t passkey_trials = 0;            // per (length, depth) cell; 0: no passkey grid
  std::vector<int64_t> passkey_lengths;  // empty: L, 2L (lengths below passkey_min_length() are skipped)
  int64_t recall_trials = 0;             // 0: no recall
  int64_t recall_pairs = 0, recall_queries = 0;  // 0: default_recall_size(L)
  uint64_t seed = 0;                     // passkey keys and recall examples
};

// Told about each measurement as it starts and ends (progress lines, printed tables).
class EvalSuiteObserver {
 public:
  virtual ~EvalSuiteObserver() = default;
  virtual void starting(const std::string& /*what*/) {}
  virtual void bits_per_byte_done(const EvalCurvePoint& /*point*/) {}
  // Before the first cell: the lengths that will be measured and those skipped.
  virtual void passkey_starting(const std::vector<int64_t>& /*lengths*/, const std::vector<int64_t>& /*skipped*/) {}
  // last_of_length: the cell at the last depth of its length (a table row is complete).
  virtual void passkey_done(const PasskeyCell& /*cell*/, bool /*last_of_length*/) {}
  virtual void recall_done(const RecallResult& /*result*/) {}
};

// The recall size the suite will use for training length L: the options' pairs and
// queries where given, else default_recall_size(L), with a default Q never above a
// given P.
void eval_suite_recall_size(const EvalSuiteOptions& options, int64_t L, int64_t* pairs, int64_t* queries);

// eval.json for a model trained with `config` (L = config.model.seq_len): what was
// measured on ({config, parameter_count, data, val_fraction, val_bytes, seed, device}),
// then bits per byte at each length over `val` ({stride, max_windows, batch_size,
// points}; a stride larger than a length is clamped to it, so a stride meant for the
// long lengths still works at the short ones), the passkey grid over passkey lengths x
// default_passkey_depths() ("passkey": {trials, depths, lengths, skipped_lengths, cells},
// cells row-major: cell i * depths + j is (lengths[i], depths[j]), every cell with
// `seed`; when passkey_trials > 0) and associative recall ("recall", when
// recall_trials > 0). `data` names where val came from.
nlohmann::json run_eval_suite(const GPT& model, const TrainConfig& config, const std::string& data,
                              const std::vector<uint8_t>& val, Device device, const EvalSuiteOptions& options,
                              EvalSuiteObserver& observer);

}  // namespace runway::nn
