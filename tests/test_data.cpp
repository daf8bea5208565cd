// The data side of training: corpus loading and splitting, random and evaluation
// windows, passkey documents and associative-recall examples.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/random.h"
#include "nn/data.h"

using namespace runway;
using namespace runway::nn;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp folder, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("runway_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& rel = "") const { return rel.empty() ? path.string() : (path / rel).string(); }
};

void write_file(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << content;
}

// n bytes of readable text, distinct per `tag`.
std::string text_of(size_t n, char tag) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += static_cast<char>(i % 10 == 9 ? '\n' : tag + static_cast<char>(i % 3));
  return s;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

size_t count_occurrences(const std::string& hay, const std::string& needle) {
  size_t count = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1)) ++count;
  return count;
}

// The T + 1 bytes of row b of a (inputs, targets) batch.
std::string row_window(const std::vector<int64_t>& inputs, const std::vector<int64_t>& targets, int64_t b,
                       int64_t T) {
  std::string w(1, static_cast<char>(inputs[b * T]));
  for (int64_t t = 0; t < T; ++t) w += static_cast<char>(targets[b * T + t]);
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------

TEST_CASE("load_corpus keeps plain text files, sorted, and skips .dat, .u8, symlinks, hidden, binary, empty") {
  TempDir dir;
  const std::string a = text_of(400, 'a'), b = text_of(400, 'd'), c = text_of(50, 'g');
  // Written in reverse order, so sorting is not an accident of creation order.
  write_file(dir.path / "sub" / "c", c);
  write_file(dir.path / "b.txt", b);
  write_file(dir.path / "a", a);
  write_file(dir.path / "a.dat", std::string("\0\0\0\2binary", 10));
  write_file(dir.path / "b.u8", b);  // a .u8 copy (not a link) is skipped too
  fs::create_symlink("a", dir.path / "a.u8");
  fs::create_symlink("a", dir.path / "alias");  // symlink without a suffix
  fs::create_directory_symlink("sub", dir.path / "sublink");  // would duplicate sub/c
  write_file(dir.path / ".hidden", text_of(300, 'x'));
  write_file(dir.path / ".git" / "config", text_of(300, 'x'));
  write_file(dir.path / "bin", std::string("abc\0def", 7));
  write_file(dir.path / "empty", "");

  const ByteCorpus corpus = load_corpus(dir.str(), 0.1);
  REQUIRE(corpus.files == std::vector<std::string>{dir.str("a"), dir.str("b.txt"), dir.str("sub/c")});
  // Hand-applied document rule (f = 0.1): a: 0 + 200 < 40? no. b.txt: 0 + 200 < 80? no.
  // sub/c: 0 + 25 < 85? yes -> val.
  CHECK(corpus.split_by_documents);
  CHECK(corpus.val_files == std::vector<std::string>{dir.str("sub/c")});
  CHECK(corpus.train == bytes_of(a + b));
  CHECK(corpus.val == bytes_of(c));

  // Deterministic: the same folder gives the same corpus.
  const ByteCorpus again = load_corpus(dir.str(), 0.1);
  CHECK(again.train == corpus.train);
  CHECK(again.val == corpus.val);
  CHECK(again.files == corpus.files);
}

TEST_CASE("load_corpus document split interleaves val documents by the documented rule") {
  TempDir dir;
  const std::vector<size_t> sizes{300, 300, 40, 300, 40};
  std::vector<std::string> docs;
  for (size_t i = 0; i < sizes.size(); ++i) {
    docs.push_back(text_of(sizes[i], static_cast<char>('a' + 3 * i)));
    write_file(dir.path / ("d" + std::to_string(i)), docs.back());
  }
  // f = 0.1 by hand: d0 150<30 no; d1 150<60 no; d2 20<64 yes (V=40); d3 190<94 no;
  // d4 40+20=60<98 yes (V=80).
  const ByteCorpus corpus = load_corpus(dir.str(), 0.1);
  CHECK(corpus.split_by_documents);
  CHECK(corpus.val_files == std::vector<std::string>{dir.str("d2"), dir.str("d4")});
  CHECK(corpus.train == bytes_of(docs[0] + docs[1] + docs[3]));
  CHECK(corpus.val == bytes_of(docs[2] + docs[4]));

  // A larger fraction moves more documents: f = 0.5: d0 150<150 no; d1 150<300 yes
  // (V=300); d2 320<320 no; d3 450<470 yes (V=600); d4 620<490 no.
  const ByteCorpus half = load_corpus(dir.str(), 0.5);
  CHECK(half.val_files == std::vector<std::string>{dir.str("d1"), dir.str("d3")});
  CHECK(half.val == bytes_of(docs[1] + docs[3]));
  CHECK(half.train == bytes_of(docs[0] + docs[2] + docs[4]));
}

TEST_CASE("load_corpus splits by bytes for a single file or when documents cannot be split") {
  TempDir dir;
  const std::string s = text_of(50, 'a');
  write_file(dir.path / "one.txt", s);
  ByteCorpus single = load_corpus(dir.str("one.txt"), 0.1);
  CHECK_FALSE(single.split_by_documents);
  CHECK(single.files == std::vector<std::string>{dir.str("one.txt")});
  CHECK(single.train == bytes_of(s.substr(0, 45)));
  CHECK(single.val == bytes_of(s.substr(45)));
  CHECK(single.val_files.empty());

  // A folder with one kept file behaves like that file.
  ByteCorpus folder = load_corpus(dir.str(), 0.1);
  CHECK_FALSE(folder.split_by_documents);
  CHECK(folder.train == single.train);
  CHECK(folder.val == single.val);

  // Two documents of equal size: the document rule sends both to train (100 < 20? and
  // 100 < 40? no), so the concatenation is split by bytes: the last 20 of 200.
  TempDir two;
  const std::string x = text_of(100, 'a'), y = text_of(100, 'k');
  write_file(two.path / "x", x);
  write_file(two.path / "y", y);
  ByteCorpus both = load_corpus(two.str(), 0.1);
  CHECK_FALSE(both.split_by_documents);
  CHECK(both.files.size() == 2);
  CHECK(both.train == bytes_of(x + y.substr(0, 80)));
  CHECK(both.val == bytes_of(y.substr(80)));

  // Exactly ceil(1 / f) bytes is enough: 10 bytes with f = 0.1 -> 9 + 1.
  write_file(dir.path / "ten", "0123456789");
  ByteCorpus ten = load_corpus(dir.str("ten"), 0.1);
  CHECK(ten.train == bytes_of("012345678"));
  CHECK(ten.val == bytes_of("9"));
}

TEST_CASE("load_corpus errors name the path and the problem") {
  TempDir dir;
  const std::string missing = dir.str("nope");
  CHECK_THROWS_AS(load_corpus(missing), Error);
  CHECK_THROWS_WITH(load_corpus(missing), Contains(missing) && Contains("does not exist"));

  write_file(dir.path / "empty.txt", "");
  CHECK_THROWS_WITH(load_corpus(dir.str("empty.txt")), Contains(dir.str("empty.txt")) && Contains("is empty"));

  TempDir none;  // only things that are skipped
  write_file(none.path / "f.dat", "index");
  write_file(none.path / "f.u8", "text");
  write_file(none.path / "blank", "");
  fs::create_symlink(dir.str("empty.txt"), none.path / "link");
  CHECK_THROWS_WITH(load_corpus(none.str()), Contains("no text files under") && Contains(none.str()));
  TempDir bare;
  CHECK_THROWS_WITH(load_corpus(bare.str()), Contains("no text files under"));

  write_file(dir.path / "tiny", "012345678");  // 9 bytes, f = 0.1 -> floor(0.9) = 0
  CHECK_THROWS_WITH(load_corpus(dir.str("tiny"), 0.1),
                    Contains("too small") && Contains(dir.str("tiny")) && Contains("at least 10 bytes"));
  CHECK(load_corpus(dir.str("tiny"), 0.25).val == bytes_of("78"));  // floor(2.25) = 2
  CHECK_THROWS_WITH(load_corpus(dir.str("tiny"), 0.0), Contains("val_fraction"));
  CHECK_THROWS_WITH(load_corpus(dir.str("tiny"), 1.0), Contains("val_fraction"));
}

TEST_CASE("the fortunes corpus loads with non-empty splits") {
  const std::string path = "/usr/share/games/fortunes";
  if (!fs::is_directory(path)) {
    WARN("skipping: " << path << " is absent (install the fortunes package)");
    return;
  }
  const ByteCorpus corpus = load_corpus(path);
  REQUIRE_FALSE(corpus.files.empty());
  CHECK(corpus.train.size() > 0);
  CHECK(corpus.val.size() > 0);
  CHECK(corpus.split_by_documents);
  CHECK(std::is_sorted(corpus.files.begin(), corpus.files.end()));
  uintmax_t total = 0;
  for (const auto& f : corpus.files) {
    CHECK_FALSE(fs::is_symlink(f));
    CHECK(f.find(".dat") == std::string::npos);
    CHECK(f.find(".u8") == std::string::npos);
    total += fs::file_size(f);
  }
  CHECK(corpus.train.size() + corpus.val.size() == total);
  const double frac = static_cast<double>(corpus.val.size()) / static_cast<double>(total);
  CHECK(frac > 0.05);
  CHECK(frac < 0.15);
}

// ---------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------

TEST_CASE("WindowSampler: targets are inputs shifted by one, offsets uniform in range, seeded") {
  const int64_t n = 12, T = 4, B = 5;
  std::vector<uint8_t> data(n);
  for (int64_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(100 + i);  // byte = 100 + position
  WindowSampler sampler(data, T);
  Generator gen(7), mirror(7);
  std::vector<int64_t> in, tg, off;
  std::set<int64_t> seen;
  for (int rep = 0; rep < 200; ++rep) {
    sampler.next_batch(B, gen, &in, &tg, &off);
    REQUIRE(in.size() == static_cast<size_t>(B * T));
    REQUIRE(tg.size() == static_cast<size_t>(B * T));
    REQUIRE(off.size() == static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      CHECK(off[b] == static_cast<int64_t>(mirror.below(n - T)));  // the documented draw
      CHECK(off[b] >= 0);
      CHECK(off[b] <= n - T - 1);
      seen.insert(off[b]);
      for (int64_t t = 0; t < T; ++t) {
        CHECK(in[b * T + t] == 100 + off[b] + t);
        CHECK(tg[b * T + t] == 100 + off[b] + t + 1);
      }
    }
  }
  CHECK(seen.size() == static_cast<size_t>(n - T));  // every offset 0 .. n-T-1 occurs

  // Same seed -> same batch; another seed -> another batch; state round-trips.
  std::vector<int64_t> in1, tg1, in2, tg2, in3, tg3;
  Generator g1(3), g2(3), g3(4);
  sampler.next_batch(8, g1, &in1, &tg1);
  sampler.next_batch(8, g2, &in2, &tg2);
  sampler.next_batch(8, g3, &in3, &tg3);
  CHECK(in1 == in2);
  CHECK(tg1 == tg2);
  CHECK(in1 != in3);
  const Generator::State st = g1.state();
  sampler.next_batch(8, g1, &in1, &tg1);
  g2.set_state(st);
  sampler.next_batch(8, g2, &in2, &tg2);
  CHECK(in1 == in2);

  // Exactly T + 1 bytes: the only offset is 0.
  WindowSampler exact(std::vector<uint8_t>(data.begin(), data.begin() + T + 1), T);
  exact.next_batch(3, gen, &in, &tg, &off);
  CHECK(off == std::vector<int64_t>{0, 0, 0});
  CHECK_THROWS_WITH(WindowSampler(std::vector<uint8_t>(data.begin(), data.begin() + T), T),
                    Contains("4 bytes") && Contains("T + 1 = 5"));
  CHECK_THROWS_AS(WindowSampler(data, 0), Error);
  CHECK_THROWS_AS(sampler.next_batch(0, gen, &in, &tg), Error);
}

namespace {
// Every target position 1 .. n-1 must be scored exactly once, by windows that fit.
void check_cover(int64_t n, int64_t T, const std::vector<EvalWindow>& ws) {
  std::vector<int> scored(static_cast<size_t>(n), 0);
  for (const auto& w : ws) {
    CHECK(w.offset >= 0);
    CHECK(w.offset + T + 1 <= n);
    CHECK(w.score_from >= 0);
    CHECK(w.score_from < T);
    for (int64_t t = w.score_from; t < T; ++t) scored[static_cast<size_t>(w.offset + t + 1)]++;
  }
  CHECK(scored[0] == 0);
  for (int64_t p = 1; p < n; ++p) {
    INFO("n=" << n << " T=" << T << " position " << p);
    CHECK(scored[static_cast<size_t>(p)] == 1);
  }
}
}  // namespace

TEST_CASE("sequential and strided windows cover every target once, as documented") {
  auto eq = [](const std::vector<EvalWindow>& ws, const std::vector<std::pair<int64_t, int64_t>>& want) {
    if (ws.size() != want.size()) return false;
    for (size_t i = 0; i < ws.size(); ++i)
      if (ws[i].offset != want[i].first || ws[i].score_from != want[i].second) return false;
    return true;
  };
  // n = 9, T = 4: windows at 0 and 4 reach target position 8 = n - 1; no tail.
  CHECK(eq(sequential_windows(9, 4), {{0, 0}, {4, 0}}));
  // n = 11: 2 positions (9, 10) left -> a tail window at 11 - 5 = 6 scoring its last 2.
  CHECK(eq(sequential_windows(11, 4), {{0, 0}, {4, 0}, {6, 2}}));
  CHECK(eq(sequential_windows(5, 4), {{0, 0}}));
  // Strided: n = 20, T = 8, S = 4: offsets 0, 4, 8; targets up to 16 covered, 3 left.
  CHECK(eq(strided_windows(20, 8, 4), {{0, 0}, {4, 4}, {8, 4}, {11, 5}}));
  CHECK(eq(strided_windows(17, 8, 4), {{0, 0}, {4, 4}, {8, 4}}));

  for (int64_t n : {5, 6, 9, 10, 11, 37, 100})
    for (int64_t T : {1, 2, 4})
      for (int64_t S = 1; S <= T; ++S) {
        if (n < T + 1) continue;
        const auto ws = strided_windows(n, T, S);
        check_cover(n, T, ws);
        for (size_t k = 1; k < ws.size(); ++k) CHECK(ws[k].score_from >= T - S);  // context kept
      }
  for (int64_t n : {5, 9, 11, 64, 65, 66})
    check_cover(n, 4, sequential_windows(n, 4));

  CHECK_THROWS_WITH(strided_windows(20, 8, 0), Contains("stride"));
  CHECK_THROWS_WITH(strided_windows(20, 8, 9), Contains("stride"));
  CHECK_THROWS_WITH(sequential_windows(4, 4), Contains("T + 1 = 5"));

  // fill_windows: values from the bytes, unscored targets set to the ignore index.
  std::vector<uint8_t> data(11);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(50 + i);
  std::vector<int64_t> in, tg;
  fill_windows(data, 4, sequential_windows(11, 4), &in, &tg);
  CHECK(in == std::vector<int64_t>{50, 51, 52, 53, 54, 55, 56, 57, 56, 57, 58, 59});
  CHECK(tg == std::vector<int64_t>{51, 52, 53, 54, 55, 56, 57, 58, -100, -100, 59, 60});
  fill_windows(data, 4, {{6, 3}}, &in, &tg, -1);
  CHECK(tg == std::vector<int64_t>{-1, -1, -1, 60});
  CHECK_THROWS_AS(fill_windows(data, 4, {{7, 0}}, &in, &tg), Error);
}

// ---------------------------------------------------------------------------
// Passkey
// ---------------------------------------------------------------------------

TEST_CASE("make_passkey builds documents of exact length with the key twice and as answer") {
  const std::string question = "What is the pass key? The pass key is <";
  CHECK(passkey_min_length() == 63 + 39 + 5);
  for (int64_t length : {107, 108, 150, 256, 1000, 4097}) {
    for (double depth : {0.0, 0.3, 0.5, 0.99, 1.0}) {
      Generator gen(static_cast<uint64_t>(length) * 31 + static_cast<uint64_t>(depth * 100));
      Generator mirror = gen;
      const PasskeyExample ex = make_passkey(length, depth, gen);
      INFO("length " << length << " depth " << depth);
      CHECK(static_cast<int64_t>(ex.text.size()) == length);
      CHECK(ex.text == ex.prompt + ex.answer);
      REQUIRE(ex.answer.size() == 5);
      std::string expect_key;
      for (int i = 0; i < 5; ++i) expect_key += static_cast<char>('0' + mirror.below(10));
      CHECK(ex.answer == expect_key);
      CHECK(std::all_of(ex.answer.begin(), ex.answer.end(), [](char c) { return c >= '0' && c <= '9'; }));
      // The prompt ends with the question; the key appears exactly twice before it.
      REQUIRE(ex.prompt.size() >= question.size());
      CHECK(ex.prompt.substr(ex.prompt.size() - question.size()) == question);
      const std::string before_question = ex.prompt.substr(0, ex.prompt.size() - question.size());
      CHECK(count_occurrences(before_question, ex.answer) == 2);
      const std::string needle =
          "The pass key is <" + ex.answer + ">. Remember it. <" + ex.answer + "> is the pass key. ";
      CHECK(ex.text.substr(static_cast<size_t>(ex.needle_offset), needle.size()) == needle);
      // Removing the needle leaves a prefix of the repeated filler sentence.
      std::string filler = before_question;
      filler.erase(static_cast<size_t>(ex.needle_offset), needle.size());
      std::string rep;
      while (rep.size() < filler.size()) rep += kPasskeyFiller;
      CHECK(filler == rep.substr(0, filler.size()));
      const int64_t F = static_cast<int64_t>(filler.size());
      CHECK(F == length - 107);
      if (depth == 0.0) CHECK(ex.needle_offset == 0);
      if (depth == 1.0) CHECK(ex.needle_offset + static_cast<int64_t>(needle.size()) ==
                              length - 5 - static_cast<int64_t>(question.size()));
      // Placed on a word boundary within a word's length of depth * F.
      if (ex.needle_offset > 0 && ex.needle_offset < F) CHECK(filler[ex.needle_offset - 1] == ' ');
      CHECK(std::abs(static_cast<double>(ex.needle_offset) - depth * F) <= 4.0);
    }
  }
  // The minimum length has no filler at all.
  Generator gen(1);
  const PasskeyExample tight = make_passkey(107, 0.5, gen);
  CHECK(tight.needle_offset == 0);
  CHECK(tight.prompt.substr(0, 17) == "The pass key is <");
  // Ties go to the smaller boundary: F = 14 ("The grass is g"), depth * F = 7 lies
  // halfway between the boundaries 4 and 10.
  CHECK(make_passkey(121, 0.5, gen).needle_offset == 4);
  CHECK(make_passkey(121, 0.6, gen).needle_offset == 10);  // 8.4 -> 10
  CHECK_THROWS_WITH(make_passkey(106, 0.5, gen), Contains("106") && Contains("107"));
  CHECK_THROWS_AS(make_passkey(200, 1.5, gen), Error);
  CHECK_THROWS_AS(make_passkey(200, -0.1, gen), Error);

  // Keys vary, leading zeros included, and a seed reproduces them.
  std::set<std::string> keys;
  bool leading_zero = false;
  Generator g(5);
  for (int i = 0; i < 300; ++i) {
    const auto ex = make_passkey(120, 0.5, g);
    keys.insert(ex.answer);
    leading_zero = leading_zero || ex.answer[0] == '0';
  }
  CHECK(keys.size() > 290);
  CHECK(leading_zero);
  Generator a(9), b(9);
  CHECK(make_passkey(300, 0.4, a).text == make_passkey(300, 0.4, b).text);
}

TEST_CASE("mix_passkey starts rows with passkey documents of random length, keeping the rest of the window") {
  const int64_t B = 16, T = 127;
  const std::vector<uint8_t> data = bytes_of(text_of(1000, 'a'));
  WindowSampler sampler(data, T);
  Generator gen(11);
  std::vector<int64_t> in, tg;
  sampler.next_batch(B, gen, &in, &tg);
  const std::vector<int64_t> in0 = in, tg0 = tg;

  Generator mix_gen(12), mirror(12);
  const std::vector<int64_t> rows = mix_passkey(in, tg, B, T, 0.5, mix_gen);
  CHECK_FALSE(rows.empty());
  CHECK(rows.size() < static_cast<size_t>(B));
  std::vector<int64_t> expect_rows;
  std::set<int64_t> lengths;
  for (int64_t b = 0; b < B; ++b) {
    const bool replaced = std::find(rows.begin(), rows.end(), b) != rows.end();
    if (mirror.uniform01() < 0.5) {  // the documented draws
      expect_rows.push_back(b);
      const double depth = mirror.uniform01();
      const int64_t length = 107 + static_cast<int64_t>(mirror.below(static_cast<uint64_t>(T + 2 - 107)));
      lengths.insert(length);
      const PasskeyExample ex = make_passkey(length, depth, mirror);
      const std::string w = row_window(in, tg, b, T);
      CHECK(w.substr(0, static_cast<size_t>(length)) == ex.text);
      CHECK(w.substr(static_cast<size_t>(length)) == row_window(in0, tg0, b, T).substr(static_cast<size_t>(length)));
      // The answer digits are the targets at positions length - 6 .. length - 2.
      for (int64_t i = 0; i < 5; ++i) CHECK(tg[b * T + length - 6 + i] == ex.answer[static_cast<size_t>(i)]);
    }
    if (!replaced) {
      for (int64_t t = 0; t < T; ++t) {
        CHECK(in[b * T + t] == in0[b * T + t]);
        CHECK(tg[b * T + t] == tg0[b * T + t]);
      }
    }
  }
  CHECK(lengths.size() >= 2);  // the answer is not always at the same position
  CHECK(rows == expect_rows);

  // fraction 1 replaces every row; fraction 0 replaces none and draws nothing.
  std::vector<int64_t> all_in = in0, all_tg = tg0;
  Generator g1(1);
  CHECK(mix_passkey(all_in, all_tg, B, T, 1.0, g1).size() == static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) CHECK(row_window(all_in, all_tg, b, T).find("The pass key is ") != std::string::npos);
  std::vector<int64_t> no_in = in0, no_tg = tg0;
  Generator g0(1), untouched(1);
  CHECK(mix_passkey(no_in, no_tg, B, T, 0.0, g0).empty());
  CHECK(no_in == in0);
  CHECK(g0.next() == untouched.next());

  std::vector<int64_t> small_in(4 * 50), small_tg(4 * 50);
  CHECK_THROWS_WITH(mix_passkey(small_in, small_tg, 4, 50, 0.5, gen), Contains("107"));
  CHECK_THROWS_AS(mix_passkey(in, tg, B + 1, T, 0.5, gen), Error);
  CHECK_THROWS_AS(mix_passkey(in, tg, B, T, 1.5, gen), Error);
}

// ---------------------------------------------------------------------------
// Associative recall
// ---------------------------------------------------------------------------

TEST_CASE("make_recall: unique keys, and queried values equal the stored ones at the recorded positions") {
  for (auto [P, Q] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {8, 3}, {20, 20}, {64, 16}, {676, 5}}) {
    INFO("pairs " << P << " queries " << Q);
    Generator gen(static_cast<uint64_t>(P * 1000 + Q));
    const RecallExample ex = make_recall(P, Q, gen);
    CHECK(static_cast<int64_t>(ex.text.size()) == 6 * (P + Q) + 1);
    CHECK(recall_length(P, Q) == 6 * (P + Q) + 1);
    REQUIRE(static_cast<int64_t>(ex.keys.size()) == P);
    REQUIRE(static_cast<int64_t>(ex.values.size()) == P);
    REQUIRE(static_cast<int64_t>(ex.queries.size()) == Q);
    REQUIRE(static_cast<int64_t>(ex.value_positions.size()) == 2 * Q);
    CHECK(std::set<std::string>(ex.keys.begin(), ex.keys.end()).size() == static_cast<size_t>(P));
    CHECK(std::set<int64_t>(ex.queries.begin(), ex.queries.end()).size() == static_cast<size_t>(Q));

    // Parse the text independently: "kk=vv " * P, '|', "kk=vv " * Q.
    const size_t bar = ex.text.find('|');
    REQUIRE(bar == static_cast<size_t>(6 * P));
    std::map<std::string, std::string> stored;
    for (int64_t i = 0; i < P; ++i) {
      const std::string tok = ex.text.substr(static_cast<size_t>(6 * i), 6);
      CHECK(tok[2] == '=');
      CHECK(tok[5] == ' ');
      const std::string k = tok.substr(0, 2), v = tok.substr(3, 2);
      CHECK((k[0] >= 'a' && k[0] <= 'z' && k[1] >= 'a' && k[1] <= 'z'));
      CHECK((v[0] >= '0' && v[0] <= '9' && v[1] >= '0' && v[1] <= '9'));
      CHECK(stored.count(k) == 0);
      stored[k] = v;
      CHECK(k == ex.keys[i]);
      CHECK(v == ex.values[i]);
    }
    for (int64_t j = 0; j < Q; ++j) {
      const size_t start = bar + 1 + static_cast<size_t>(6 * j);
      const std::string qkey = ex.text.substr(start, 2);
      REQUIRE(stored.count(qkey) == 1);
      CHECK(qkey == ex.keys[ex.queries[j]]);
      const int64_t p0 = ex.value_positions[2 * j], p1 = ex.value_positions[2 * j + 1];
      CHECK(p0 == static_cast<int64_t>(start) + 3);
      CHECK(p1 == p0 + 1);
      CHECK(ex.text[p0 - 1] == '=');
      CHECK(std::string{ex.text[p0], ex.text[p1]} == stored[qkey]);
    }
  }
  Generator gen(1);
  CHECK_THROWS_WITH(make_recall(677, 1, gen), Contains("676"));
  CHECK_THROWS_AS(make_recall(0, 1, gen), Error);
  CHECK_THROWS_AS(make_recall(5, 6, gen), Error);
  CHECK_THROWS_AS(make_recall(5, 0, gen), Error);
  Generator a(3), b(3), c(4);
  const std::string ta = make_recall(30, 10, a).text;
  CHECK(ta == make_recall(30, 10, b).text);
  CHECK(ta != make_recall(30, 10, c).text);
}

TEST_CASE("mix_recall puts a recall example at the end of replaced rows") {
  const int64_t B = 12, T = 100, P = 8, Q = 4;
  const int64_t len = recall_length(P, Q);  // 73
  WindowSampler sampler(bytes_of(text_of(500, 'a')), T);
  Generator gen(2);
  std::vector<int64_t> in, tg;
  sampler.next_batch(B, gen, &in, &tg);
  const std::vector<int64_t> in0 = in, tg0 = tg;
  Generator mix(21), mirror(21);
  const auto rows = mix_recall(in, tg, B, T, 0.5, P, Q, mix);
  CHECK_FALSE(rows.empty());
  std::vector<int64_t> expect_rows;
  for (int64_t b = 0; b < B; ++b) {
    const std::string before = row_window(in0, tg0, b, T), after = row_window(in, tg, b, T);
    if (mirror.uniform01() < 0.5) {
      expect_rows.push_back(b);
      const RecallExample ex = make_recall(P, Q, mirror);
      CHECK(after.substr(static_cast<size_t>(T + 1 - len)) == ex.text);
      CHECK(after.substr(0, static_cast<size_t>(T + 1 - len)) == before.substr(0, static_cast<size_t>(T + 1 - len)));
    } else {
      CHECK(after == before);
    }
  }
  CHECK(rows == expect_rows);
  CHECK_THROWS_WITH(mix_recall(in, tg, B, T, 0.5, 10, 10, gen), Contains("121"));
}

// ---------------------------------------------------------------------------
// Mixing fractions measured on many batches
// ---------------------------------------------------------------------------

namespace {

// Whether a T + 1 byte window is a well-formed passkey document, parsed here from the
// documented layout: filler[0:p] + needle(key) + filler[p:F] + question + key, with the
// filler kPasskeyFiller repeated and cut to F bytes.
bool is_passkey_document(const std::string& w) {
  const std::string question = kPasskeyQuestion;
  if (w.size() < static_cast<size_t>(passkey_min_length())) return false;
  const std::string key = w.substr(w.size() - 5);
  if (!std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  if (w.compare(w.size() - 5 - question.size(), question.size(), question) != 0) return false;
  const std::string needle = "The pass key is <" + key + ">. Remember it. <" + key + "> is the pass key. ";
  const std::string body = w.substr(0, w.size() - 5 - question.size());
  const size_t at = body.find(needle);
  if (at == std::string::npos) return false;
  std::string filler;
  const size_t F = body.size() - needle.size();
  while (filler.size() < F) filler += kPasskeyFiller;
  filler.resize(F);
  return body.substr(0, at) + body.substr(at + needle.size()) == filler;
}

// The length of the passkey document a mixed window starts with (0 when it does not):
// the document ends 5 digits after the first question.
size_t passkey_prefix_length(const std::string& w) {
  const std::string question = kPasskeyQuestion;
  const size_t at = w.find(question);
  if (at == std::string::npos || at + question.size() + 5 > w.size()) return 0;
  const size_t length = at + question.size() + 5;
  return is_passkey_document(w.substr(0, length)) ? length : 0;
}

// Whether `tail` is a well-formed recall example of P pairs and Q queries:
// "kk=vv " * P, '|', "kk=vv " * Q with distinct 2-letter keys, 2-digit values, distinct
// queried keys, each with its stored value.
bool is_recall_example(const std::string& tail, int64_t P, int64_t Q) {
  if (static_cast<int64_t>(tail.size()) != 6 * (P + Q) + 1 || tail[static_cast<size_t>(6 * P)] != '|') return false;
  auto entry = [&](size_t at, std::string* k, std::string* v) {
    const std::string e = tail.substr(at, 6);
    *k = e.substr(0, 2);
    *v = e.substr(3, 2);
    return std::islower(static_cast<unsigned char>(e[0])) && std::islower(static_cast<unsigned char>(e[1])) &&
           e[2] == '=' && std::isdigit(static_cast<unsigned char>(e[3])) &&
           std::isdigit(static_cast<unsigned char>(e[4])) && e[5] == ' ';
  };
  std::map<std::string, std::string> stored;
  std::string k, v;
  for (int64_t i = 0; i < P; ++i) {
    if (!entry(static_cast<size_t>(6 * i), &k, &v) || stored.count(k)) return false;
    stored[k] = v;
  }
  std::set<std::string> asked;
  for (int64_t j = 0; j < Q; ++j) {
    if (!entry(static_cast<size_t>(6 * P + 1 + 6 * j), &k, &v) || !stored.count(k) || stored[k] != v ||
        !asked.insert(k).second)
      return false;
  }
  return true;
}

// |count - n f| within 5 binomial standard deviations.
void check_fraction(int64_t count, int64_t n, double f) {
  const double mean = static_cast<double>(n) * f, sd = std::sqrt(mean * (1.0 - f));
  INFO(count << " of " << n << " rows replaced, expected " << mean << " +- " << sd << " (fraction " << f << ")");
  CHECK(std::fabs(static_cast<double>(count) - mean) <= 5.0 * sd);
}

}  // namespace

TEST_CASE("mix_passkey and mix_recall replace the configured fraction of rows with well-formed documents") {
  const int64_t B = 50, T = 127, batches = 400, rows = B * batches;  // 20000 rows per fraction
  const int64_t P = 6, Q = 4, len = recall_length(P, Q);
  WindowSampler sampler(bytes_of(text_of(3000, 'a')), T);
  for (double f : {0.02, 0.3, 0.85}) {
    INFO("fraction " << f);
    Generator data(5), mix(99);
    int64_t passkey_rows = 0, recall_rows = 0, bad = 0;
    size_t shortest = SIZE_MAX, longest = 0;
    std::vector<int64_t> in, tg;
    for (int64_t i = 0; i < batches; ++i) {
      sampler.next_batch(B, data, &in, &tg);
      std::vector<int64_t> in0 = in, tg0 = tg;
      const std::vector<int64_t> replaced = mix_passkey(in, tg, B, T, f, mix);
      passkey_rows += static_cast<int64_t>(replaced.size());
      for (int64_t b = 0; b < B; ++b) {
        const bool listed = std::find(replaced.begin(), replaced.end(), b) != replaced.end();
        const std::string w = row_window(in, tg, b, T);
        const std::string before = row_window(in0, tg0, b, T);
        const size_t length = listed ? passkey_prefix_length(w) : 0;
        if (length > 0) shortest = std::min(shortest, length), longest = std::max(longest, length);
        bad += listed ? length == 0 || w.substr(length) != before.substr(length) : w != before;
      }
      in = in0;
      tg = tg0;
      const std::vector<int64_t> recalled = mix_recall(in, tg, B, T, f, P, Q, mix);
      recall_rows += static_cast<int64_t>(recalled.size());
      for (int64_t b = 0; b < B; ++b) {
        const bool listed = std::find(recalled.begin(), recalled.end(), b) != recalled.end();
        const std::string w = row_window(in, tg, b, T), before = row_window(in0, tg0, b, T);
        const size_t keep = static_cast<size_t>(T + 1 - len);
        bad += listed ? !(is_recall_example(w.substr(keep), P, Q) && w.substr(0, keep) == before.substr(0, keep))
                      : w != before;
      }
    }
    CHECK(bad == 0);
    // Document lengths cover [passkey_min_length(), T + 1].
    CHECK(shortest == static_cast<size_t>(passkey_min_length()));
    CHECK(longest == static_cast<size_t>(T + 1));
    check_fraction(passkey_rows, rows, f);
    check_fraction(recall_rows, rows, f);
  }
}

TEST_CASE("the well-formedness checks of the mixing test accept documents and refuse near misses") {
  Generator gen(3);
  const std::string doc = make_passkey(128, 0.4, gen).text;
  CHECK(is_passkey_document(doc));
  CHECK_FALSE(is_passkey_document(text_of(128, 'a')));
  std::string wrong_answer = doc;
  wrong_answer.back() = wrong_answer.back() == '9' ? '0' : static_cast<char>(wrong_answer.back() + 1);
  CHECK_FALSE(is_passkey_document(wrong_answer));
  std::string bad_filler = doc;
  bad_filler[bad_filler.find("green")] = 'G';
  CHECK_FALSE(is_passkey_document(bad_filler));
  const std::string ex = make_recall(6, 4, gen).text;
  CHECK(is_recall_example(ex, 6, 4));
  std::string wrong_value = ex;
  wrong_value[wrong_value.size() - 2] = wrong_value[wrong_value.size() - 2] == '9' ? '0' : '9';
  CHECK_FALSE(is_recall_example(wrong_value, 6, 4));
  CHECK_FALSE(is_recall_example(text_of(ex.size(), 'a'), 6, 4));
}
