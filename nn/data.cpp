#include "nn/data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include "engine/dtype.h"
#include "engine/file_io.h"

namespace runway::nn {

namespace fs = std::filesystem;

// ============================================================================
// Corpus
// ============================================================================

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Through InputFile: a FIFO or device (given, or swapped in after the folder listing)
// is refused instead of blocking or reading forever.
std::vector<uint8_t> read_file_bytes(const std::string& path) {
  const std::string text = read_regular_file(path, "load_corpus", "a text file or folder");
  return std::vector<uint8_t>(text.begin(), text.end());
}

// The kept files under a folder (see load_corpus), sorted by path string.
std::vector<std::string> list_text_files(const std::string& root) {
  std::vector<std::string> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::none, ec), end;
  if (ec) throw Error(fmt::format("load_corpus: cannot read folder {}: {}", root, ec.message()));
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    const fs::directory_entry& entry = *it;
    const std::string name = entry.path().filename().string();
    std::error_code e2;
    if (entry.is_symlink(e2)) continue;  // never followed, whether file or folder
    if (!name.empty() && name[0] == '.') {
      if (entry.is_directory(e2)) it.disable_recursion_pending();
      continue;
    }
    if (!entry.is_regular_file(e2)) continue;
    if (ends_with(name, ".dat") || ends_with(name, ".u8")) continue;
    files.push_back(entry.path().string());
  }
  if (ec) throw Error(fmt::format("load_corpus: cannot read folder under {}: {}", root, ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

int64_t val_bytes_for(int64_t n, double f) {
  // floor(f * n), with a little slack so that e.g. 0.29 * 100 counts as 29.
  return static_cast<int64_t>(std::floor(f * static_cast<double>(n) + 1e-9));
}

}  // namespace

ByteCorpus load_corpus(const std::string& path, double val_fraction) {
  if (!(val_fraction > 0.0 && val_fraction < 1.0))
    throw Error(fmt::format("load_corpus: val_fraction must be in (0, 1), got {}", val_fraction));
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw Error(fmt::format("load_corpus: {} does not exist", path));
  if (!fs::is_directory(st) && !fs::is_regular_file(st))
    throw Error(fmt::format("load_corpus: {} is not a regular file or a folder (a FIFO, device or socket is not read)",
                            path));

  ByteCorpus corpus;
  std::vector<std::vector<uint8_t>> docs;
  if (fs::is_directory(st)) {
    for (const std::string& file : list_text_files(path)) {
      std::vector<uint8_t> bytes = read_file_bytes(file);
      if (bytes.empty()) continue;
      if (std::find(bytes.begin(), bytes.end(), uint8_t{0}) != bytes.end()) continue;  // binary
      corpus.files.push_back(file);
      docs.push_back(std::move(bytes));
    }
    if (docs.empty())
      throw Error(fmt::format(
          "load_corpus: no text files under {} (skipped: symlinks, hidden, *.dat, *.u8, empty "
          "and binary files)",
          path));
  } else {
    std::vector<uint8_t> bytes = read_file_bytes(path);
    if (bytes.empty()) throw Error(fmt::format("load_corpus: {} is empty", path));
    corpus.files.push_back(path);
    docs.push_back(std::move(bytes));
  }

  int64_t total = 0;
  for (const auto& d : docs) total += static_cast<int64_t>(d.size());

  // Document split.
  if (docs.size() >= 2) {
    std::vector<bool> to_val(docs.size(), false);
    int64_t seen = 0, val = 0;
    size_t n_val = 0;
    for (size_t i = 0; i < docs.size(); ++i) {
      const double n = static_cast<double>(docs[i].size());
      if (static_cast<double>(val) + n / 2 < val_fraction * (static_cast<double>(seen) + n)) {
        to_val[i] = true;
        val += static_cast<int64_t>(docs[i].size());
        ++n_val;
      }
      seen += static_cast<int64_t>(docs[i].size());
    }
    if (n_val > 0 && n_val < docs.size()) {
      corpus.split_by_documents = true;
      for (size_t i = 0; i < docs.size(); ++i) {
        auto& dst = to_val[i] ? corpus.val : corpus.train;
        dst.insert(dst.end(), docs[i].begin(), docs[i].end());
        if (to_val[i]) corpus.val_files.push_back(corpus.files[i]);
      }
      return corpus;
    }
  }

  // Byte split: the last floor(f * N) bytes are val.
  const int64_t n_val = val_bytes_for(total, val_fraction);
  if (n_val < 1 || n_val >= total)
    throw Error(fmt::format(
        "load_corpus: corpus too small: {} has {} bytes, and val_fraction {} leaves an empty "
        "split (need at least {} bytes)",
        path, total, val_fraction, static_cast<int64_t>(std::ceil(1.0 / val_fraction - 1e-9))));
  std::vector<uint8_t> all;
  all.reserve(static_cast<size_t>(total));
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  corpus.train.assign(all.begin(), all.end() - n_val);
  corpus.val.assign(all.end() - n_val, all.end());
  return corpus;
}

// ============================================================================
// Windows
// ============================================================================

WindowSampler::WindowSampler(std::vector<uint8_t> bytes, int64_t T) : bytes_(std::move(bytes)), T_(T) {
  if (T < 1) throw Error(fmt::format("WindowSampler: window length T must be >= 1, got {}", T));
  if (static_cast<int64_t>(bytes_.size()) < T + 1)
    throw Error(fmt::format("WindowSampler: data has {} bytes, need at least T + 1 = {}",
                            bytes_.size(), T + 1));
}

void WindowSampler::next_batch(int64_t batch, Generator& gen, std::vector<int64_t>* inputs,
                               std::vector<int64_t>* targets, std::vector<int64_t>* offsets) const {
  if (batch < 1) throw Error(fmt::format("WindowSampler::next_batch: batch must be >= 1, got {}", batch));
  if (!inputs || !targets) throw Error("WindowSampler::next_batch: inputs and targets must not be null");
  const int64_t T = T_;
  const uint64_t choices = static_cast<uint64_t>(size() - T);  // offsets 0 .. n - T - 1
  inputs->resize(static_cast<size_t>(batch * T));
  targets->resize(static_cast<size_t>(batch * T));
  if (offsets) offsets->resize(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = static_cast<int64_t>(gen.below(choices));
    if (offsets) (*offsets)[b] = o;
    const uint8_t* src = bytes_.data() + o;
    int64_t* in = inputs->data() + b * T;
    int64_t* tg = targets->data() + b * T;
    for (int64_t t = 0; t < T; ++t) {
      in[t] = src[t];
      tg[t] = src[t + 1];
    }
  }
}

std::vector<EvalWindow> strided_windows(int64_t n, int64_t T, int64_t stride) {
  if (T < 1) throw Error(fmt::format("strided_windows: window length T must be >= 1, got {}", T));
  if (stride < 1 || stride > T)
    throw Error(fmt::format("strided_windows: stride must be in [1, T = {}], got {}", T, stride));
  if (n < T + 1)
    throw Error(fmt::format("strided_windows: data has {} bytes, need at least T + 1 = {}", n, T + 1));
  std::vector<EvalWindow> windows;
  int64_t offset = 0;
  for (; offset + T + 1 <= n; offset += stride)
    windows.push_back({offset, windows.empty() ? 0 : T - stride});
  const int64_t last_target = windows.back().offset + T;  // highest target position covered
  const int64_t left = (n - 1) - last_target;
  if (left > 0) windows.push_back({n - T - 1, T - left});
  return windows;
}

std::vector<EvalWindow> sequential_windows(int64_t n, int64_t T) { return strided_windows(n, T, T); }

void fill_windows(const std::vector<uint8_t>& bytes, int64_t T, const std::vector<EvalWindow>& windows,
                  std::vector<int64_t>* inputs, std::vector<int64_t>* targets, int64_t ignore_index) {
  if (!inputs || !targets) throw Error("fill_windows: inputs and targets must not be null");
  const int64_t n = static_cast<int64_t>(bytes.size());
  const int64_t B = static_cast<int64_t>(windows.size());
  inputs->resize(static_cast<size_t>(B * T));
  targets->resize(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    const EvalWindow& w = windows[b];
    if (w.offset < 0 || w.offset + T + 1 > n || w.score_from < 0 || w.score_from > T)
      throw Error(fmt::format("fill_windows: window {} (offset {}, score_from {}) does not fit {} bytes "
                              "with T = {}",
                              b, w.offset, w.score_from, n, T));
    for (int64_t t = 0; t < T; ++t) {
      (*inputs)[b * T + t] = bytes[w.offset + t];
      (*targets)[b * T + t] = t >= w.score_from ? bytes[w.offset + t + 1] : ignore_index;
    }
  }
}

// ============================================================================
// Passkey retrieval
// ============================================================================

const char* const kPasskeyFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const char* const kPasskeyNeedle = "The pass key is <NNNNN>. Remember it. <NNNNN> is the pass key. ";
const char* const kPasskeyQuestion = "What is the pass key? The pass key is <";

int64_t passkey_min_length() {
  return static_cast<int64_t>(std::string(kPasskeyNeedle).size() + std::string(kPasskeyQuestion).size()) +
         kPasskeyDigits;
}

PasskeyExample make_passkey(int64_t length, double depth, Generator& gen) {
  const int64_t min_len = passkey_min_length();
  if (length < min_len)
    throw Error(fmt::format("make_passkey: length {} is too small: the needle, question and answer need "
                            "at least {} bytes",
                            length, min_len));
  if (!(depth >= 0.0 && depth <= 1.0))
    throw Error(fmt::format("make_passkey: depth must be in [0, 1], got {}", depth));

  std::string key(kPasskeyDigits, '0');
  for (auto& c : key) c = static_cast<char>('0' + gen.below(10));

  const int64_t F = length - min_len;
  const std::string sentence = kPasskeyFiller;
  std::string filler;
  filler.reserve(static_cast<size_t>(F));
  while (static_cast<int64_t>(filler.size()) < F) filler += sentence;
  filler.resize(static_cast<size_t>(F));

  // Nearest word boundary to depth * F (0, F, or just after a space; ties: smaller).
  const double target = depth * static_cast<double>(F);
  int64_t best = 0;
  double best_dist = target;
  auto consider = [&](int64_t p) {
    const double d = std::fabs(static_cast<double>(p) - target);
    if (d < best_dist) {
      best = p;
      best_dist = d;
    }
  };
  for (int64_t p = 1; p < F; ++p)
    if (filler[static_cast<size_t>(p - 1)] == ' ') consider(p);
  consider(F);

  std::string needle = kPasskeyNeedle;
  for (size_t pos; (pos = needle.find("NNNNN")) != std::string::npos;) needle.replace(pos, 5, key);

  PasskeyExample ex;
  ex.needle_offset = best;
  ex.prompt = filler.substr(0, static_cast<size_t>(best)) + needle + filler.substr(static_cast<size_t>(best)) +
              kPasskeyQuestion;
  ex.answer = key;
  ex.text = ex.prompt + key;
  return ex;
}

namespace {

void check_batch(const char* op, const std::vector<int64_t>& inputs, const std::vector<int64_t>& targets,
                 int64_t batch, int64_t T, double fraction) {
  if (batch < 1 || T < 1) throw Error(fmt::format("{}: batch and T must be >= 1, got {} and {}", op, batch, T));
  if (static_cast<int64_t>(inputs.size()) != batch * T || static_cast<int64_t>(targets.size()) != batch * T)
    throw Error(fmt::format("{}: inputs ({}) and targets ({}) must both hold batch * T = {} values", op,
                            inputs.size(), targets.size(), batch * T));
  if (!(fraction >= 0.0 && fraction <= 1.0))
    throw Error(fmt::format("{}: fraction must be in [0, 1], got {}", op, fraction));
}

// Overwrites the first text.size() (<= T + 1) bytes of row b's T + 1 byte window
// (inputs[b*T + t] is window byte t, targets[b*T + t] byte t + 1); the rest is kept.
void write_row_prefix(std::vector<int64_t>& inputs, std::vector<int64_t>& targets, int64_t b, int64_t T,
                      const std::string& text) {
  const int64_t n = static_cast<int64_t>(text.size());
  for (int64_t t = 0; t < n; ++t) {
    if (t < T) inputs[b * T + t] = static_cast<uint8_t>(text[t]);
    if (t >= 1) targets[b * T + t - 1] = static_cast<uint8_t>(text[t]);
  }
}

}  // namespace

std::vector<int64_t> mix_passkey(std::vector<int64_t>& inputs, std::vector<int64_t>& targets, int64_t batch,
                                 int64_t T, double fraction, Generator& gen) {
  check_batch("mix_passkey", inputs, targets, batch, T, fraction);
  const int64_t min_len = passkey_min_length();
  if (T + 1 < min_len)
    throw Error(fmt::format("mix_passkey: T + 1 = {} is below the minimum passkey length {}", T + 1, min_len));
  std::vector<int64_t> replaced;
  if (fraction == 0.0) return replaced;
  for (int64_t b = 0; b < batch; ++b) {
    if (!(gen.uniform01() < fraction)) continue;
    const double depth = gen.uniform01();
    const int64_t length = min_len + static_cast<int64_t>(gen.below(static_cast<uint64_t>(T + 2 - min_len)));
    write_row_prefix(inputs, targets, b, T, make_passkey(length, depth, gen).text);
    replaced.push_back(b);
  }
  return replaced;
}

// ============================================================================
// Associative recall
// ============================================================================

int64_t recall_length(int64_t num_pairs, int64_t num_queries) { return 6 * (num_pairs + num_queries) + 1; }

RecallExample make_recall(int64_t num_pairs, int64_t num_queries, Generator& gen) {
  if (num_pairs < 1 || num_pairs > 26 * 26)
    throw Error(fmt::format("make_recall: num_pairs must be in [1, 676] (distinct 2-letter keys), got {}",
                            num_pairs));
  if (num_queries < 1 || num_queries > num_pairs)
    throw Error(fmt::format("make_recall: num_queries must be in [1, num_pairs = {}], got {}", num_pairs,
                            num_queries));
  RecallExample ex;
  std::set<std::string> used;
  for (int64_t i = 0; i < num_pairs; ++i) {
    std::string key;
    do {
      key = {static_cast<char>('a' + gen.below(26)), static_cast<char>('a' + gen.below(26))};
    } while (used.count(key));
    used.insert(key);
    std::string value = {static_cast<char>('0' + gen.below(10)), static_cast<char>('0' + gen.below(10))};
    ex.keys.push_back(key);
    ex.values.push_back(value);
  }
  std::vector<int64_t> order(static_cast<size_t>(num_pairs));
  for (int64_t i = 0; i < num_pairs; ++i) order[i] = i;
  for (int64_t i = 0; i < num_queries; ++i)
    std::swap(order[i], order[i + static_cast<int64_t>(gen.below(static_cast<uint64_t>(num_pairs - i)))]);
  ex.queries.assign(order.begin(), order.begin() + num_queries);

  for (int64_t i = 0; i < num_pairs; ++i) ex.text += ex.keys[i] + "=" + ex.values[i] + " ";
  ex.text += "|";
  for (int64_t q : ex.queries) {
    ex.text += ex.keys[q] + "=";
    ex.value_positions.push_back(static_cast<int64_t>(ex.text.size()));
    ex.value_positions.push_back(static_cast<int64_t>(ex.text.size()) + 1);
    ex.text += ex.values[q] + " ";
  }
  return ex;
}

std::vector<int64_t> mix_recall(std::vector<int64_t>& inputs, std::vector<int64_t>& targets, int64_t batch,
                                int64_t T, double fraction, int64_t num_pairs, int64_t num_queries,
                                Generator& gen) {
  check_batch("mix_recall", inputs, targets, batch, T, fraction);
  const int64_t len = recall_length(num_pairs, num_queries);
  if (len > T + 1)
    throw Error(fmt::format("mix_recall: a recall example with {} pairs and {} queries has {} bytes, more "
                            "than T + 1 = {}",
                            num_pairs, num_queries, len, T + 1));
  std::vector<int64_t> replaced;
  if (fraction == 0.0) return replaced;
  for (int64_t b = 0; b < batch; ++b) {
    if (!(gen.uniform01() < fraction)) continue;
    const RecallExample ex = make_recall(num_pairs, num_queries, gen);
    std::string window(static_cast<size_t>(T + 1), '\0');
    window[0] = static_cast<char>(inputs[b * T]);
    for (int64_t t = 0; t < T; ++t) window[t + 1] = static_cast<char>(targets[b * T + t]);
    window.replace(static_cast<size_t>(T + 1 - len), static_cast<size_t>(len), ex.text);
    write_row_prefix(inputs, targets, b, T, window);
    replaced.push_back(b);
  }
  return replaced;
}

}  // namespace runway::nn
