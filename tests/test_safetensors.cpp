// safetensors reading and writing (engine/safetensors.h). Expected files are assembled
// by hand from the format description (8-byte little-endian header length, JSON header
// padded with spaces to a multiple of 8, raw little-endian data), never from our own
// writer, so that a bug shared by reader and writer cannot hide in a round trip.
#include <catch2/catch.hpp>

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>

#include <fmt/format.h>

#include "tests/test_support.h"
#include "engine/safetensors.h"

using namespace runway;
using runway::testing::read_bytes;
using runway::testing::TempDir;
using runway::testing::write_bytes;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {



// Little-endian bytes of a value (the test host is little-endian, as the engine assumes).
template <typename T> std::string le_bytes(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
}

// The 8-byte little-endian length, spelled out byte by byte.
std::string le_u64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file assembled by hand: the length of `header` as given (no padding
// added), the header, then the data bytes.
std::string st_file(const std::string& header, const std::string& data) { return le_u64(header.size()) + header + data; }

std::string raw_contents(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.numel() * dtype_size(c.dtype()));
}

template <typename T, typename Bits> T from_bits(Bits bits) {
  static_assert(sizeof(T) == sizeof(Bits));
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace

TEST_CASE("safetensors round trip of several tensors and metadata, bit for bit") {
  TempDir dir;
  const double inf = std::numeric_limits<double>::infinity();
  Tensor f32 = Tensor::from_vector({-0.0, 0.0, inf, -inf, 1.5, -2.25}, {2, 3}, DType::Float32);
  f32.data<float>()[1] = from_bits<float>(uint32_t{0x7fc00001});   // quiet NaN with a payload
  f32.data<float>()[4] = from_bits<float>(uint32_t{0xffa00002});   // signalling NaN, sign set
  f32.data<float>()[5] = from_bits<float>(uint32_t{0x00000001});   // smallest denormal
  Tensor f64 = Tensor::from_vector({-0.0, inf, -inf, std::nan(""), 5e-324, 1.7976931348623157e308, 0.1}, {7},
                                   DType::Float64);
  f64.data<double>()[3] = from_bits<double>(uint64_t{0xfff0000000000123});  // NaN with payload
  Tensor i64 = Tensor::from_indices({0, -1, 42}, {3});
  i64.data<int64_t>()[0] = std::numeric_limits<int64_t>::max();
  i64.data<int64_t>()[1] = std::numeric_limits<int64_t>::min();
  Tensor scalar = Tensor::scalar(3.25, DType::Float64);
  Tensor empty = Tensor::zeros({2, 0, 3}, DType::Float32);
  Tensor empty1 = Tensor::zeros({0}, DType::Int64);
  Tensor grad_leaf = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, DType::Float64);
  grad_leaf.set_requires_grad(true);
  // A strided, offset view: its values, not its storage, must be written.
  Tensor view = Tensor::arange(0, 12, 1, DType::Float64).reshape({3, 4}).transpose(0, 1).slice(0, 1, 3);

  const std::vector<std::pair<std::string, Tensor>> tensors{
      {"layers.0.weight", f32}, {"ids", i64},   {"z_scalar", scalar}, {"empty", empty},   {"f64", f64},
      {"empty1", empty1},       {"", grad_leaf}, {"view", view},       {"naïve ✓", f32}};
  const std::map<std::string, std::string> metadata{
      {"format", "pt"}, {"empty", ""}, {"quote \"and\" \\ slash", "line\nbreak\ttab\x01"}, {"ünïcode", "値 ✓"}};
  const std::string path = dir / "m.safetensors";
  write_safetensors(path, tensors, metadata);

  const SafetensorsFile r = read_safetensors(path);
  CHECK(r.metadata == metadata);
  REQUIRE(r.tensors.size() == tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    INFO("tensor " << i << " '" << tensors[i].first << "'");
    const Tensor& got = r.tensors[i].second;
    const Tensor& want = tensors[i].second;
    CHECK(r.tensors[i].first == tensors[i].first);  // file order = written order
    CHECK(got.dtype() == want.dtype());
    CHECK(got.shape() == want.shape());
    CHECK(got.device() == Device::CPU);
    CHECK(got.is_contiguous());
    CHECK_FALSE(got.requires_grad());
    CHECK(raw_contents(got) == raw_contents(want));
  }
  CHECK(r.tensors[7].second.to_vector() == std::vector<double>{1, 5, 9, 2, 6, 10});

  // The data starts 8-byte aligned after a space-padded header, as the reference pads it.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  CHECK(n % 8 == 0);
  CHECK(bytes.substr(8, 16) == "{\"__metadata__\":");
  size_t data_bytes = 0;
  for (const auto& [name, t] : tensors) data_bytes += t.numel() * dtype_size(t.dtype());
  CHECK(bytes.size() == 8 + n + data_bytes);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});

  // No tensors and no metadata is a legal file too.
  write_safetensors(dir / "none.safetensors", {});
  const SafetensorsFile none = read_safetensors(dir / "none.safetensors");
  CHECK(none.tensors.empty());
  CHECK(none.metadata.empty());
}

TEST_CASE("safetensors writer produces exactly the bytes the format prescribes") {
  TempDir dir;
  // One F32 tensor "a" of shape [2] = [1.0, 2.0]. Compact JSON, keys in the reference
  // order dtype, shape, data_offsets; data_offsets [0, 8] (2 x 4 bytes). The header is
  // 54 characters: { "a" : { "dtype" : "F32" , "shape" : [2] , "data_offsets" : [0,8] } }
  //                1 + 3 +1+ 1 + 7 +1+ 5 + 1 + 7 +1+ 3 + 1 +      14      +1+  5  + 1 + 1
  // padded with 2 spaces to 56 = 0x38, a multiple of 8, so the data starts at byte 64.
  const std::string header1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  REQUIRE(header1.size() == 54);
  const std::string expected1 = std::string("\x38\x00\x00\x00\x00\x00\x00\x00", 8) + header1 + "  " +
                                std::string("\x00\x00\x80\x3f", 4) +  // 1.0f
                                std::string("\x00\x00\x00\x40", 4);   // 2.0f
  REQUIRE(expected1.size() == 72);
  write_safetensors(dir / "a.safetensors", {{"a", Tensor::from_vector({1.0, 2.0}, {2}, DType::Float32)}});
  CHECK(read_bytes(dir / "a.safetensors") == expected1);

  // Metadata {"k": "v"} comes first; then "b", F64 [1, 1] = [-0.0], then "a", I64 scalar
  // 7, in the order given (not sorted by name). The header is 134 characters:
  //   {                                                        1
  //   "__metadata__":{"k":"v"},                         14+1+9+1 = 25  -> 26
  //   "b":{"dtype":"F64","shape":[1,1],"data_offsets":[0,8]},  3+1+50+1 = 55 -> 81
  //   "a":{"dtype":"I64","shape":[],"data_offsets":[8,16]}     3+1+48 = 52   -> 133
  //   }                                                                       -> 134
  // padded with 2 spaces to 136 = 0x88.
  const std::string header2 =
      "{\"__metadata__\":{\"k\":\"v\"},\"b\":{\"dtype\":\"F64\",\"shape\":[1,1],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]}}";
  REQUIRE(header2.size() == 134);
  const std::string expected2 = std::string("\x88\x00\x00\x00\x00\x00\x00\x00", 8) + header2 + "  " +
                                std::string("\x00\x00\x00\x00\x00\x00\x00\x80", 8) +  // -0.0
                                std::string("\x07\x00\x00\x00\x00\x00\x00\x00", 8);   // 7
  REQUIRE(expected2.size() == 160);
  write_safetensors(dir / "b.safetensors",
                    {{"b", Tensor::from_vector({-0.0}, {1, 1}, DType::Float64)}, {"a", Tensor::from_indices({7}, {})}},
                    {{"k", "v"}});
  CHECK(read_bytes(dir / "b.safetensors") == expected2);

  // Nothing at all: "{}" padded with 6 spaces to 8.
  write_safetensors(dir / "e.safetensors", {});
  CHECK(read_bytes(dir / "e.safetensors") == std::string("\x08\x00\x00\x00\x00\x00\x00\x00{}      ", 16));

  // A header that is already a multiple of 8 long gets no padding. "abcdefghi", F64 [0, 3]:
  //   { "abcdefghi" : { "dtype":"F64" , "shape":[0,3] , "data_offsets":[0,0] } }
  //   1 +    11     +1+ 1 +  7+1+5    +1+  7+1+5      +1+     14+1+5        +1 +1 = 64
  const std::string header3 = "{\"abcdefghi\":{\"dtype\":\"F64\",\"shape\":[0,3],\"data_offsets\":[0,0]}}";
  REQUIRE(header3.size() == 64);
  write_safetensors(dir / "z.safetensors", {{"abcdefghi", Tensor::zeros({0, 3}, DType::Float64)}});
  CHECK(read_bytes(dir / "z.safetensors") == std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + header3);

  // And the reader accepts the hand-written files.
  write_bytes(dir / "hand1.safetensors", expected1);
  SafetensorsFile r1 = read_safetensors(dir / "hand1.safetensors");
  REQUIRE(r1.tensors.size() == 1);
  CHECK(r1.tensors[0].first == "a");
  CHECK(r1.tensors[0].second.dtype() == DType::Float32);
  CHECK(r1.tensors[0].second.to_vector() == std::vector<double>{1.0, 2.0});
  CHECK(r1.metadata.empty());

  write_bytes(dir / "hand2.safetensors", expected2);
  SafetensorsFile r2 = read_safetensors(dir / "hand2.safetensors");
  REQUIRE(r2.tensors.size() == 2);
  CHECK(r2.tensors[0].first == "b");
  CHECK(r2.tensors[0].second.shape() == Shape{1, 1});
  CHECK(std::signbit(r2.tensors[0].second.item()));
  CHECK(r2.tensors[1].first == "a");
  CHECK(r2.tensors[1].second.shape() == Shape{});
  CHECK(r2.tensors[1].second.to_indices() == std::vector<int64_t>{7});
  CHECK(r2.metadata == std::map<std::string, std::string>{{"k", "v"}});
}

TEST_CASE("safetensors reads any key order, whitespace and tensor order in the header") {
  TempDir dir;
  // Data: "second" (I64 [2]) at [0, 16), "first" (F64 [2, 1]) at [16, 32), "third"
  // (F32 [1]) at [32, 36). The JSON lists them third, first, second, with each entry's
  // keys in another order, metadata in the middle, newlines and tabs, an escaped name,
  // and no padding (the data need not be aligned for reading).
  const std::string header =
      "\n{ \"third\" : {\"data_offsets\": [32, 36], \"shape\": [1], \"dtype\": \"F32\", \"extra\": {\"ignored\": [1]}},\n"
      "\t\"__metadata__\": {\"b\": \"2\", \"a\": \"\\u00e9\\n\"},\n"
      "  \"fi\\u0072st\": {\"shape\": [2, 1], \"data_offsets\": [16, 32], \"dtype\": \"F64\"},\n"
      "  \"second\": {\"dtype\": \"I64\", \"data_offsets\": [0, 16], \"shape\": [2]}\n} ";
  REQUIRE(header.size() % 8 != 0);
  const std::string data = le_bytes<int64_t>(-5) + le_bytes<int64_t>(1LL << 40) + le_bytes(0.25) + le_bytes(-8.5) +
                           le_bytes(3.5f);
  write_bytes(dir / "h.safetensors", st_file(header, data));
  const SafetensorsFile r = read_safetensors(dir / "h.safetensors");
  REQUIRE(r.tensors.size() == 3);
  CHECK(r.tensors[0].first == "second");
  CHECK(r.tensors[0].second.dtype() == DType::Int64);
  CHECK(r.tensors[0].second.to_indices() == std::vector<int64_t>{-5, 1LL << 40});
  CHECK(r.tensors[1].first == "first");
  CHECK(r.tensors[1].second.dtype() == DType::Float64);
  CHECK(r.tensors[1].second.shape() == Shape{2, 1});
  CHECK(r.tensors[1].second.to_vector() == std::vector<double>{0.25, -8.5});
  CHECK(r.tensors[2].first == "third");
  CHECK(r.tensors[2].second.dtype() == DType::Float32);
  CHECK(r.tensors[2].second.to_vector() == std::vector<double>{3.5});
  CHECK(r.metadata == std::map<std::string, std::string>{{"a", "\xc3\xa9\n"}, {"b", "2"}});

  // Zero-size tensors sharing an offset keep their header order; "__metadata__": null
  // means no metadata, as in the reference reader.
  const std::string header2 =
      "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},\"__metadata__\":null,"
      "\"y\":{\"dtype\":\"F64\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
      "\"x\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[0,0]}}";
  write_bytes(dir / "z.safetensors", st_file(header2, le_bytes(1.0f)));
  const SafetensorsFile z = read_safetensors(dir / "z.safetensors");
  std::vector<std::string> names;
  for (const auto& [name, t] : z.tensors) names.push_back(name);
  CHECK(names == std::vector<std::string>{"x", "w", "z", "y"});
  CHECK(z.tensors[1].second.item() == 1.0);
  CHECK(z.tensors[3].second.shape() == Shape{3, 0});
  CHECK(z.metadata.empty());
}

TEST_CASE("safetensors handles many tensors in near-linear time") {
  TempDir dir;
  // 20000 tensors, every other one empty (so many share an offset): written in order,
  // read back in the same order, each with its own value.
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 20000; ++i) {
    if (i % 2) tensors.emplace_back(fmt::format("empty.{}", i), Tensor::zeros({0}, DType::Float32));
    else tensors.emplace_back(fmt::format("t.{}", i), Tensor::full({1}, i, DType::Float64));
  }
  write_safetensors(dir / "many.safetensors", tensors);
  const SafetensorsFile r = read_safetensors(dir / "many.safetensors");
  REQUIRE(r.tensors.size() == tensors.size());
  bool same = true;
  for (size_t i = 0; i < tensors.size(); ++i) {
    same = same && r.tensors[i].first == tensors[i].first && r.tensors[i].second.shape() == tensors[i].second.shape();
    if (i % 2 == 0) same = same && r.tensors[i].second.item() == static_cast<double>(i);
  }
  CHECK(same);

  // A header of 300000 keys is refused (or read) quickly, not in quadratic time.
  std::string header = "{";
  for (int i = 0; i < 300000; ++i) header += fmt::format("{}\"k{}\":{{}}", i ? "," : "", i);
  header += "}";
  write_bytes(dir / "keys.safetensors", st_file(header, ""));
  CHECK_THROWS_WITH(read_safetensors(dir / "keys.safetensors"), Contains("tensor \"k0\": the entry has no \"dtype\""));
}

TEST_CASE("safetensors reports every malformed input with the path and the problem") {
  TempDir dir;
  const std::string two_f32 = le_bytes(1.0f) + le_bytes(2.0f);
  // A header with one tensor "t" whose entry is `entry`.
  auto one = [](const std::string& entry) { return "{\"t\":" + entry + "}"; };
  auto check_error = [&](const std::string& name, const std::string& bytes, const std::string& problem) {
    const std::string path = dir / name;
    write_bytes(path, bytes);
    INFO(name);
    CHECK_THROWS_AS(read_safetensors(path), runway::Error);
    CHECK_THROWS_WITH(read_safetensors(path), Contains(path) && Contains(problem));
  };

  // The file itself.
  const std::string missing = dir / "does_not_exist.safetensors";
  CHECK_THROWS_WITH(read_safetensors(missing), Contains(missing) && Contains("cannot open") &&
                                                   Contains("No such file or directory"));
  CHECK_THROWS_WITH(read_safetensors(dir.path), Contains(dir.path) && Contains("is a directory"));
  check_error("empty.st", "", "file is truncated: a safetensors file starts with an 8-byte header length, "
                              "expected at least 8 bytes, the file has 0");
  check_error("five.st", std::string("\x08\x00\x00\x00\x00", 5), "expected at least 8 bytes, the file has 5");

  // The header length.
  check_error("absurd.st", le_u64(100'000'001) + "{}", "header length 100000001 is absurd");
  check_error("absurd2.st", std::string(8, '\xff') + "{}", "header length 18446744073709551615 is absurd");
  check_error("long.st", le_u64(64) + "{}      ",
              "file is truncated: the header length says 64 header bytes, but only 8 bytes follow it "
              "(expected at least 72 bytes, the file has 16)");
  check_error("zero.st", le_u64(0), "header is not valid JSON");

  // The JSON.
  check_error("syntax.st", st_file("{\"t\" {}}", ""), "header is not valid JSON");
  check_error("unterminated.st", st_file("{\"t\":{\"dtype\":\"F32}}", ""), "header is not valid JSON");
  check_error("trailing_comma.st", st_file("{\"t\":{},}", ""), "header is not valid JSON");
  check_error("utf8.st", st_file("{\"\xff\xfe\":{}}", ""), "header is not valid JSON");
  check_error("nul_pad.st", st_file(std::string("{}\0\0\0\0\0\0", 8), ""), "header is not valid JSON: it has a NUL byte at offset 2");
  check_error("nul_mid.st", st_file(std::string("{\"a\0\":1}", 8), ""), "NUL byte at offset 3");
  check_error("bom.st", st_file("\xef\xbb\xbf{}", ""), "header is not valid JSON: it starts with a byte order mark");
  check_error("two_values.st", st_file("{} {}", ""), "header is not valid JSON");
  check_error("array.st", st_file("[1, 2]", ""), "header is an array ([1,2]), not a JSON object");
  check_error("string.st", st_file("\"hello\"", ""), "not a JSON object");
  check_error("dup_tensor.st",
              st_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", two_f32),
              "header has the key \"t\" twice");
  check_error("dup_field.st", st_file(one("{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}"), two_f32),
              "key \"dtype\" twice");
  check_error("deep.st", st_file(std::string(100000, '[') + std::string(100000, ']'), ""), "nested more than");
  check_error("deep_obj.st", st_file(one(std::string(5000, '[') + std::string(5000, ']')), ""), "nested more than");

  // The entries.
  check_error("entry_int.st", st_file(one("3"), ""), "tensor \"t\": the entry must be an object");
  check_error("no_dtype.st", st_file(one("{\"shape\":[2],\"data_offsets\":[0,8]}"), two_f32),
              "tensor \"t\": the entry has no \"dtype\"");
  check_error("no_shape.st", st_file(one("{\"dtype\":\"F32\",\"data_offsets\":[0,8]}"), two_f32),
              "tensor \"t\": the entry has no \"shape\"");
  check_error("no_offsets.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2]}"), two_f32),
              "tensor \"t\": the entry has no \"data_offsets\"");
  check_error("dtype_int.st", st_file(one("{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}"), two_f32),
              "\"dtype\" must be a string, got the integer 32");
  check_error("shape_str.st", st_file(one("{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}"), two_f32),
              "\"shape\" must be an array of integers, got the string \"2\"");
  check_error("shape_float.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}"), two_f32),
              "\"shape\" has a non-integer dimension (the number 2.0)");
  check_error("shape_null.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,8]}"), two_f32),
              "non-integer dimension (null)");
  check_error("offsets_one.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}"), two_f32),
              "\"data_offsets\" must be an array of two integers [begin, end], got an array ([8])");
  check_error("offsets_three.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}"), two_f32),
              "\"data_offsets\" must be an array of two integers");
  check_error("offsets_obj.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"begin\":0}}"), two_f32),
              "\"data_offsets\" must be an array of two integers [begin, end], got an object");
  check_error("offsets_str.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",8]}"), two_f32),
              "\"data_offsets\" must hold integers, got the string \"0\"");
  check_error("offsets_2p64.st",
              st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551616]}"), two_f32),
              "\"data_offsets\" must hold integers");

  // Dtypes: the unsupported one is named and the supported ones listed.
  for (const char* dt : {"F16", "BF16", "I32", "U8", "BOOL", "F8_E4M3", "f32", ""}) {
    check_error(fmt::format("dtype_{}.st", dt),
                st_file(one(fmt::format("{{\"dtype\":\"{}\",\"shape\":[2],\"data_offsets\":[0,8]}}", dt)), two_f32),
                fmt::format("tensor \"t\": unsupported dtype \"{}\" (supported: F32, F64, I64)", dt));
  }

  // Shapes and offsets.
  check_error("neg_dim.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}"), two_f32),
              "\"shape\" has a negative dimension -2");
  check_error("neg_offset.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}"), two_f32),
              "\"data_offsets\" has a negative offset -8");
  check_error("huge_dim.st",
              st_file(one("{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,8]}"), two_f32),
              "shape [9223372036854775808] is too large");
  check_error("overflow.st",
              st_file(one("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}"), two_f32),
              "is too large");
  check_error("bytes_overflow.st",
              st_file(one("{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}"), two_f32),
              "needs 4611686018427387904 x 8 bytes");
  check_error("reversed.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}"), two_f32),
              "data_offsets [8, 0] end before they begin");
  check_error("inconsistent.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}"), two_f32),
              "tensor \"t\": data_offsets [0, 12] span 12 bytes, but shape [2] of F32 needs 8 bytes");
  check_error("inconsistent64.st", st_file(one("{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[0,8]}"), two_f32),
              "shape [2, 3] of F64 needs 48 bytes");
  // A large but representable tensor must fail on the file size, before allocating.
  check_error("big.st",
              st_file(one("{\"dtype\":\"F32\",\"shape\":[1099511627776,1024],\"data_offsets\":[0,4503599627370496]}"),
                      two_f32),
              "file is truncated");
  check_error("out_of_range.st",
              st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[18446744073709551000,18446744073709551008]}"),
                      two_f32),
              "gap in the data: bytes [0, 18446744073709551000) belong to no tensor (before tensor \"t\"");
  const std::string a08 = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  check_error("overlap.st",
              st_file("{" + a08 + ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", two_f32 + two_f32),
              "tensor \"b\" with data_offsets [4, 12] overlaps tensor \"a\" with data_offsets [0, 8]");
  check_error("same_range.st",
              st_file("{" + a08 + ",\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", two_f32),
              "overlaps tensor");
  check_error("gap.st",
              st_file("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}," + a08 + "}",
                      two_f32 + "gap!" + two_f32),
              "gap in the data: bytes [8, 12) belong to no tensor (between tensor \"a\" [0, 8] and tensor \"b\" [12, 20])");
  check_error("gap_start.st", st_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}"), two_f32 + two_f32),
              "gap in the data: bytes [0, 8) belong to no tensor (before tensor \"t\" [8, 16])");
  check_error("trailing.st", st_file("{" + a08 + "}", two_f32 + "xyz"),
              "file has 3 trailing bytes after the tensor data (the tensors cover 8 bytes, the data section has 11)");
  check_error("trailing_empty.st", st_file("{}", "x"), "1 trailing bytes");
  const std::string header_ab =
      "{" + a08 + ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[8,24]}}";
  check_error("short_data.st", st_file(header_ab, two_f32 + le_bytes(1.0)),
              fmt::format("file is truncated: the tensors need 24 bytes of data but only 16 follow the header "
                          "(tensor \"b\" has data_offsets [8, 24]; expected a file of 8 + {0} + 24 = {1} bytes, "
                          "the file has {2})", header_ab.size(), 8 + header_ab.size() + 24, 8 + header_ab.size() + 16));

  // Metadata.
  check_error("meta_int.st", st_file("{\"__metadata__\":{\"k\":1}}", ""),
              "\"__metadata__\" values must be strings, but \"k\" is the integer 1");
  check_error("meta_nested.st", st_file("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", ""),
              "\"__metadata__\" values must be strings, but \"k\" is an object");
  check_error("meta_null_value.st", st_file("{\"__metadata__\":{\"k\":null}}", ""), "\"k\" is null");
  check_error("meta_array.st", st_file("{\"__metadata__\":[\"k\",\"v\"]}", ""),
              "\"__metadata__\" must be an object of string to string, got an array");
  check_error("meta_string.st", st_file("{\"__metadata__\":\"v\"}", ""), "\"__metadata__\" must be an object");
}

TEST_CASE("safetensors refuses every truncation of a valid file as truncated") {
  TempDir dir;
  const std::string path = dir / "t.safetensors";
  write_safetensors(path,
                    {{"w", Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::Float32)},
                     {"ids", Tensor::from_indices({3, 1, 4}, {3})},
                     {"s", Tensor::scalar(-1.5, DType::Float64)}},
                    {{"format", "pt"}});
  const std::string valid = read_bytes(path);
  REQUIRE(read_safetensors(path).tensors.size() == 3);
  for (size_t n = 0; n < valid.size(); ++n) {
    write_bytes(path, valid.substr(0, n));
    INFO("prefix of " << n << " of " << valid.size() << " bytes");
    CHECK_THROWS_AS(read_safetensors(path), runway::Error);
    CHECK_THROWS_WITH(read_safetensors(path), Contains(path) && Contains("file is truncated") &&
                                                  Contains(fmt::format("the file has {}", n)));
  }
}

TEST_CASE("safetensors reader never crashes on corrupted files") {
  TempDir dir;
  const std::string path = dir / "fuzz.safetensors";
  write_safetensors(path,
                    {{"w", Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::Float32)},
                     {"ids", Tensor::from_indices({3, 1, 4}, {3})},
                     {"e", Tensor::zeros({0, 2}, DType::Float64)},
                     {"s", Tensor::scalar(-1.5, DType::Float64)}},
                    {{"format", "pt"}, {"k", "v"}});
  const std::string valid = read_bytes(path);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(static_cast<unsigned char>(valid[i])) << (8 * i);
  const size_t header_end = 8 + header_len;

  // Reads `bytes`; success or a runway::Error naming the file, nothing else.
  int errors = 0, successes = 0;
  auto attempt = [&](const std::string& bytes) {
    write_bytes(path, bytes);
    try {
      const SafetensorsFile r = read_safetensors(path);
      ++successes;
      size_t total = 0;
      for (const auto& [name, t] : r.tensors) total += t.numel() * dtype_size(t.dtype());
      CHECK(total <= bytes.size());
    } catch (const runway::Error& e) {
      ++errors;
      CHECK_THAT(e.what(), Contains(path));
    } catch (const std::exception& e) {
      FAIL("an exception other than runway::Error escaped: " << e.what());
    } catch (...) {
      FAIL("a non-std exception escaped");
    }
  };

  std::mt19937 rng(4321);
  // Random bytes flipped anywhere in the length field and the header.
  for (int iter = 0; iter < 1000; ++iter) {
    std::string bytes = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < flips; ++e) bytes[rng() % header_end] = static_cast<char>(rng() & 0xff);
    attempt(bytes);
  }
  // JSON-flavoured edits of the header (length field kept consistent or not).
  const std::string alphabet = "{}[],:\" 0123456789-+.eEtruefalsnul\\/FI3264_metadaoffsshp\n\t\x80\xff";
  for (int iter = 0; iter < 1000; ++iter) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = 8 + rng() % header_len;
      switch (rng() % 4) {
        case 0: bytes[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: bytes.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
        case 2: bytes.erase(at, 1 + rng() % 3); break;
        default: {  // a digit changed, to move offsets and dims
          const size_t d = bytes.find_first_of("0123456789", at);
          if (d < header_end) bytes[d] = static_cast<char>('0' + rng() % 10);
        }
      }
    }
    if (rng() % 2) {  // keep the length field matching the edited header
      const uint64_t n = header_len + bytes.size() - valid.size();
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    }
    attempt(bytes);
  }
  // Random printable garbage as the whole header, with a little data.
  for (int iter = 0; iter < 500; ++iter) {
    std::string h;
    const size_t len = rng() % 120;
    for (size_t i = 0; i < len; ++i) h += alphabet[rng() % alphabet.size()];
    attempt(st_file(h, std::string(rng() % 40, '\0')));
  }
  // Random garbage as the whole file.
  for (int iter = 0; iter < 300; ++iter) {
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
    attempt(bytes);
  }
  CHECK(errors > 0);
  INFO(successes << " corruptions still read as valid files");
}

TEST_CASE("safetensors writer rejects bad input before touching the file") {
  TempDir dir;
  const std::string path = dir / "x.safetensors";
  write_safetensors(path, {{"keep", Tensor::from_vector({1, 2}, {2}, DType::Float64)}});
  const std::string before = read_bytes(path);
  const Tensor t = Tensor::zeros({2});

  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}, {"b", t}, {"a", t}}),
                    Contains(path) && Contains("the tensor name \"a\" appears twice"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"__metadata__", t}}),
                    Contains(path) && Contains("\"__metadata__\" is reserved"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}, {"u", Tensor()}}),
                    Contains(path) && Contains("tensor \"u\" is undefined"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"bad\xff", t}}),
                    Contains(path) && Contains("a tensor name is not valid UTF-8 (\"bad\\xff\")"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}}, {{"k", "\xc3"}}),
                    Contains(path) && Contains("the value of metadata key \"k\" is not valid UTF-8 (\"\\xc3\")"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}}, {{"\xe2\x82", "v"}}),
                    Contains(path) && Contains("a metadata key is not valid UTF-8 (\"\\xe2\\x82\")"));
  CHECK_THROWS_AS(write_safetensors(path, {{"a", t}, {"a", t}}), runway::Error);

  CHECK(read_bytes(path) == before);
  CHECK(dir.entries() == std::vector<std::string>{"x.safetensors"});
}

TEST_CASE("safetensors writes atomically and reports failures with the path") {
  TempDir dir;
  // Overwriting an existing file replaces it and leaves no temporary files behind.
  write_safetensors(dir / "x.safetensors", {{"a", Tensor::from_vector({1, 2, 3}, {3}, DType::Float64)}});
  write_safetensors(dir / "x.safetensors", {{"b", Tensor::from_vector({4, 5}, {2}, DType::Float32)}}, {{"k", "v"}});
  SafetensorsFile r = read_safetensors(dir / "x.safetensors");
  REQUIRE(r.tensors.size() == 1);
  CHECK(r.tensors[0].first == "b");
  CHECK(r.tensors[0].second.to_vector() == std::vector<double>{4, 5});
  CHECK(dir.entries() == std::vector<std::string>{"x.safetensors"});
  const std::string good = read_bytes(dir / "x.safetensors");

  // A missing directory: the error names the path; nothing is created.
  const std::string nowhere = dir / "no_such_dir/y.safetensors";
  CHECK_THROWS_AS(write_safetensors(nowhere, {{"a", Tensor::zeros({2})}}), runway::Error);
  CHECK_THROWS_WITH(write_safetensors(nowhere, {{"a", Tensor::zeros({2})}}),
                    Contains(nowhere) && Contains("No such file or directory"));
  CHECK_FALSE(fs::exists(dir / "no_such_dir"));

  // The target is a directory: the rename fails and the temporary file is removed.
  fs::create_directory(dir / "sub");
  CHECK_THROWS_WITH(write_safetensors(dir / "sub", {{"a", Tensor::zeros({2})}}),
                    Contains(dir / "sub") && Contains("cannot move"));
  CHECK(dir.entries() == std::vector<std::string>{"sub", "x.safetensors"});

  // A write that fails part way (the file size limit is hit, so write() reports EFBIG):
  // the old file survives untouched and the temporary file is removed.
  {
    struct rlimit saved;
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    void (*old_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 4096;
    const Tensor big = Tensor::zeros({1 << 16}, DType::Float64);  // 512 KiB
    std::string message;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    try {
      write_safetensors(dir / "x.safetensors", {{"big", big}});
    } catch (const runway::Error& e) {
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, old_handler);
    CHECK_THAT(message, Contains(dir / "x.safetensors") && Contains("write error") && Contains("File too large"));
  }
  CHECK(read_bytes(dir / "x.safetensors") == good);
  CHECK(dir.entries() == std::vector<std::string>{"sub", "x.safetensors"});
}
