#include "nn/eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "nn/data.h"

namespace runway::nn {

namespace {

using json = nlohmann::json;

Tensor ids_tensor(const std::vector<int64_t>& values, int64_t rows, int64_t cols, Device device) {
  return Tensor::from_indices(values, {rows, cols}).to(device);
}

// Index of the largest of n values (ties: the lowest index).
int64_t argmax(const double* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

bool learned_too_long(const GPT& model, int64_t T) {
  return model.config.pos == PositionEncoding::Learned && T > model.config.seq_len;
}

std::string learned_note(const GPT& model, int64_t T) {
  return fmt::format("learned positions: the model has {} position rows (seq_len) and cannot read {} bytes",
                     model.config.seq_len, T);
}

// Rows [begin, end) of a run of `total` trials in chunks of `batch` (0: all at once).
template <typename F>
void for_chunks(int64_t total, int64_t batch, F&& f) {
  const int64_t step = batch > 0 ? batch : total;
  for (int64_t begin = 0; begin < total; begin += step) f(begin, std::min(total, begin + step));
}

}  // namespace

// ============================================================================
// Bits per byte
// ============================================================================

EvalCurvePoint bits_per_byte(const GPT& model, const std::vector<uint8_t>& bytes, int64_t T, int64_t stride,
                             int64_t max_windows, int64_t batch) {
  if (T < 1) throw Error(fmt::format("bits_per_byte: window length T must be >= 1, got {}", T));
  if (stride < 0 || stride > T)
    throw Error(fmt::format("bits_per_byte: stride must be in [0, T = {}] (0: non-overlapping), got {}", T, stride));
  if (batch < 1) throw Error(fmt::format("bits_per_byte: batch must be >= 1, got {}", batch));

  EvalCurvePoint point;
  point.T = T;
  point.stride = stride == 0 ? T : stride;
  const int64_t n = static_cast<int64_t>(bytes.size());
  if (learned_too_long(model, T)) {
    point.available = false;
    point.note = learned_note(model, T);
    return point;
  }
  if (n < T + 1) {
    point.available = false;
    point.note = fmt::format("the data has {} bytes; windows of T = {} need at least {}", n, T, T + 1);
    return point;
  }

  const std::vector<EvalWindow> all = stride == 0 ? sequential_windows(n, T) : strided_windows(n, T, stride);
  const int64_t N = static_cast<int64_t>(all.size());
  point.windows_total = N;
  std::vector<EvalWindow> windows;
  if (max_windows > 0 && N > max_windows) {
    windows.reserve(static_cast<size_t>(max_windows));
    for (int64_t i = 0; i < max_windows; ++i) windows.push_back(all[static_cast<size_t>(i * N / max_windows)]);
  } else {
    windows = all;
  }

  NoGradGuard no_grad;
  const Device device = model.wte.device();
  double loss_sum = 0.0;
  int64_t scored = 0;
  std::vector<int64_t> inputs, targets;
  const int64_t W = static_cast<int64_t>(windows.size());
  for (int64_t begin = 0; begin < W; begin += batch) {
    const int64_t end = std::min(W, begin + batch);
    const std::vector<EvalWindow> chunk(windows.begin() + begin, windows.begin() + end);
    fill_windows(bytes, T, chunk, &inputs, &targets, -100);
    const int64_t count = static_cast<int64_t>(std::count_if(targets.begin(), targets.end(), [](int64_t t) { return t != -100; }));
    if (count == 0) continue;
    const int64_t B = end - begin;
    Tensor logits = model.forward(ids_tensor(inputs, B, T, device));
    const double mean = cross_entropy(logits, ids_tensor(targets, B, T, device), -100).item();
    loss_sum += mean * static_cast<double>(count);
    scored += count;
  }
  point.windows = W;
  point.targets = scored;
  point.bits_per_byte = scored > 0 ? loss_sum / static_cast<double>(scored) / std::log(2.0) : 0.0;
  return point;
}

// ============================================================================
// Passkey retrieval
// ============================================================================

const std::vector<double>& default_passkey_depths() {
  static const std::vector<double> depths{0.0, 0.25, 0.5, 0.75, 1.0};
  return depths;
}

PasskeyCell passkey_accuracy(const GPT& model, int64_t length, double depth, int64_t trials, uint64_t seed,
                             int64_t batch) {
  if (trials < 1) throw Error(fmt::format("passkey_accuracy: trials must be >= 1, got {}", trials));
  if (!(depth >= 0.0 && depth <= 1.0))
    throw Error(fmt::format("passkey_accuracy: depth must be in [0, 1], got {}", depth));
  if (batch < 0) throw Error(fmt::format("passkey_accuracy: batch must be >= 0 (0: all trials at once), got {}", batch));

  PasskeyCell cell;
  cell.length = length;
  cell.depth = depth;
  if (length < passkey_min_length()) {
    cell.available = false;
    cell.note = fmt::format("a passkey document needs at least {} bytes (needle, question and answer)",
                            passkey_min_length());
    return cell;
  }
  // The last decoding step reads the prompt plus 4 decoded digits: length - 1 bytes.
  if (learned_too_long(model, length - 1)) {
    cell.available = false;
    cell.note = learned_note(model, length - 1);
    return cell;
  }

  Generator gen(seed);
  std::vector<PasskeyExample> docs;
  docs.reserve(static_cast<size_t>(trials));
  for (int64_t i = 0; i < trials; ++i) docs.push_back(make_passkey(length, depth, gen));

  NoGradGuard no_grad;
  const Device device = model.wte.device();
  const int64_t P = length - kPasskeyDigits;  // prompt length, the same for every trial
  const int64_t V = model.config.vocab_size;
  cell.trials = trials;
  cell.predictions.assign(static_cast<size_t>(trials), std::string());
  for_chunks(trials, batch, [&](int64_t begin, int64_t end) {
    const int64_t B = end - begin;
    for (int64_t d = 0; d < kPasskeyDigits; ++d) {
      const int64_t T = P + d;
      std::vector<int64_t> ids(static_cast<size_t>(B * T));
      for (int64_t b = 0; b < B; ++b) {
        const std::string& prompt = docs[static_cast<size_t>(begin + b)].prompt;
        const std::string& pred = cell.predictions[static_cast<size_t>(begin + b)];
        for (int64_t t = 0; t < T; ++t)
          ids[static_cast<size_t>(b * T + t)] = static_cast<uint8_t>(t < P ? prompt[static_cast<size_t>(t)] : pred[static_cast<size_t>(t - P)]);
      }
      Tensor logits = model.forward(ids_tensor(ids, B, T, device));
      const std::vector<double> last = contiguous(slice(logits, 1, T - 1, T)).to_vector();  // (B, 1, V)
      for (int64_t b = 0; b < B; ++b)
        cell.predictions[static_cast<size_t>(begin + b)].push_back(
            static_cast<char>(static_cast<uint8_t>(argmax(last.data() + b * V, V))));
    }
  });

  for (int64_t i = 0; i < trials; ++i) {
    const std::string& answer = docs[static_cast<size_t>(i)].answer;
    const std::string& pred = cell.predictions[static_cast<size_t>(i)];
    cell.answers.push_back(answer);
    int64_t match = 0;
    for (int64_t d = 0; d < kPasskeyDigits; ++d) match += pred[static_cast<size_t>(d)] == answer[static_cast<size_t>(d)] ? 1 : 0;
    cell.digits_correct += match;
    if (match == kPasskeyDigits) ++cell.correct;
  }
  cell.accuracy = static_cast<double>(cell.correct) / static_cast<double>(trials);
  cell.digit_accuracy = static_cast<double>(cell.digits_correct) / static_cast<double>(kPasskeyDigits * trials);
  return cell;
}

// ============================================================================
// Associative recall
// ============================================================================

RecallResult recall_eval(const GPT& model, int64_t num_pairs, int64_t num_queries, int64_t trials, uint64_t seed,
                         int64_t batch) {
  if (trials < 1) throw Error(fmt::format("recall_eval: trials must be >= 1, got {}", trials));
  if (batch < 0) throw Error(fmt::format("recall_eval: batch must be >= 0 (0: all trials at once), got {}", batch));

  Generator gen(seed);
  std::vector<RecallExample> examples;
  examples.reserve(static_cast<size_t>(trials));
  for (int64_t i = 0; i < trials; ++i) examples.push_back(make_recall(num_pairs, num_queries, gen));

  RecallResult r;
  r.num_pairs = num_pairs;
  r.num_queries = num_queries;
  r.length = recall_length(num_pairs, num_queries) - 1;
  if (learned_too_long(model, r.length)) {
    r.available = false;
    r.note = learned_note(model, r.length);
    return r;
  }

  NoGradGuard no_grad;
  const Device device = model.wte.device();
  const int64_t T = r.length;
  const int64_t V = model.config.vocab_size;
  r.trials = trials;
  for_chunks(trials, batch, [&](int64_t begin, int64_t end) {
    const int64_t B = end - begin;
    std::vector<int64_t> ids(static_cast<size_t>(B * T));
    for (int64_t b = 0; b < B; ++b) {
      const std::string& text = examples[static_cast<size_t>(begin + b)].text;
      for (int64_t t = 0; t < T; ++t) ids[static_cast<size_t>(b * T + t)] = static_cast<uint8_t>(text[static_cast<size_t>(t)]);
    }
    const std::vector<double> logits = model.forward(ids_tensor(ids, B, T, device)).to_vector();  // (B, T, V)
    for (int64_t b = 0; b < B; ++b) {
      const RecallExample& ex = examples[static_cast<size_t>(begin + b)];
      for (int64_t p : ex.value_positions) {
        const int64_t predicted = argmax(logits.data() + (b * T + (p - 1)) * V, V);
        r.correct += predicted == static_cast<uint8_t>(ex.text[static_cast<size_t>(p)]) ? 1 : 0;
        ++r.scored;
      }
    }
  });
  r.accuracy = r.scored > 0 ? static_cast<double>(r.correct) / static_cast<double>(r.scored) : 0.0;
  return r;
}

void default_recall_size(int64_t L, int64_t* num_pairs, int64_t* num_queries) {
  const int64_t k = std::min<int64_t>(std::max<int64_t>(2, L / 6), 676 + 676);
  int64_t q = std::max<int64_t>(1, 2 * k / 5);
  int64_t p = std::min<int64_t>(676, k - q);
  q = std::min(q, p);
  if (num_pairs) *num_pairs = p;
  if (num_queries) *num_queries = q;
}

// ============================================================================
// JSON
// ============================================================================

nlohmann::json to_json(const EvalCurvePoint& p) {
  json j{{"T", p.T}, {"stride", p.stride}, {"available", p.available}};
  if (p.available) {
    j["bits_per_byte"] = p.bits_per_byte;
    j["windows"] = p.windows;
    j["windows_total"] = p.windows_total;
    j["targets"] = p.targets;
  } else {
    j["note"] = p.note;
  }
  return j;
}

nlohmann::json to_json(const PasskeyCell& c) {
  json j{{"length", c.length}, {"depth", c.depth}, {"available", c.available}};
  if (c.available) {
    j["trials"] = c.trials;
    j["correct"] = c.correct;
    j["accuracy"] = c.accuracy;
    j["digits_correct"] = c.digits_correct;
    j["digit_accuracy"] = c.digit_accuracy;
    // Predictions can hold any byte; keep them valid JSON strings as lists of byte values.
    json preds = json::array();
    for (const std::string& p : c.predictions) {
      json bytes = json::array();
      for (char ch : p) bytes.push_back(static_cast<int>(static_cast<uint8_t>(ch)));
      preds.push_back(bytes);
    }
    j["answers"] = c.answers;
    j["prediction_bytes"] = preds;
  } else {
    j["note"] = c.note;
  }
  return j;
}

nlohmann::json to_json(const RecallResult& r) {
  json j{{"num_pairs", r.num_pairs}, {"num_queries", r.num_queries}, {"length", r.length}, {"available", r.available}};
  if (r.available) {
    j["trials"] = r.trials;
    j["scored"] = r.scored;
    j["correct"] = r.correct;
    j["accuracy"] = r.accuracy;
  } else {
    j["note"] = r.note;
  }
  return j;
}

void eval_suite_recall_size(const EvalSuiteOptions& o, int64_t L, int64_t* pairs, int64_t* queries) {
  default_recall_size(L, pairs, queries);
  if (o.recall_pairs > 0) *pairs = o.recall_pairs;
  *queries = o.recall_queries > 0 ? o.recall_queries : std::min(*queries, *pairs);
}

json run_eval_suite(const GPT& model, const TrainConfig& config, const std::string& data,
                    const std::vector<uint8_t>& val, Device device, const EvalSuiteOptions& o,
                    EvalSuiteObserver& observer) {
  const int64_t L = config.model.seq_len;
  json out{{"config", config.to_json()},
           {"parameter_count", model.parameter_count()},
           {"data", data},
           {"val_fraction", config.val_fraction},
           {"val_bytes", val.size()},
           {"seed", o.seed},
           {"device", device_name(device)}};
  const std::vector<int64_t> lengths = o.lengths.empty() ? std::vector<int64_t>{L, 2 * L, 4 * L, 8 * L} : o.lengths;
  json points = json::array();
  for (int64_t T : lengths) {
    observer.starting(fmt::format("bits per byte at length {}", T));
    const EvalCurvePoint p = bits_per_byte(model, val, T, std::min(o.stride, T), o.max_windows, o.batch_size);
    observer.bits_per_byte_done(p);
    points.push_back(to_json(p));
  }
  out["bits_per_byte"] = {{"stride", o.stride}, {"max_windows", o.max_windows}, {"batch_size", o.batch_size},
                          {"points", points}};

  if (o.passkey_trials > 0) {
    std::vector<int64_t> plengths, skipped;
    for (int64_t T : o.passkey_lengths.empty() ? std::vector<int64_t>{L, 2 * L} : o.passkey_lengths)
      (T < passkey_min_length() ? skipped : plengths).push_back(T);
    const std::vector<double>& depths = default_passkey_depths();
    observer.passkey_starting(plengths, skipped);
    json cells = json::array();
    for (int64_t T : plengths)
      for (size_t d = 0; d < depths.size(); ++d) {
        observer.starting(fmt::format("passkey, length {}, depth {:.0f}%", T, depths[d] * 100));
        const PasskeyCell c = passkey_accuracy(model, T, depths[d], o.passkey_trials, o.seed, o.batch_size);
        observer.passkey_done(c, d + 1 == depths.size());
        cells.push_back(to_json(c));
      }
    out["passkey"] = {{"trials", o.passkey_trials}, {"depths", depths}, {"lengths", plengths},
                      {"skipped_lengths", skipped}, {"cells", cells}};
  }

  if (o.recall_trials > 0) {
    int64_t P = 0, Q = 0;
    eval_suite_recall_size(o, L, &P, &Q);
    observer.starting("associative recall");
    const RecallResult r = recall_eval(model, P, Q, o.recall_trials, o.seed, o.batch_size);
    observer.recall_done(r);
    out["recall"] = to_json(r);
  }
  return out;
}

}  // namespace runway::nn
