// .npy reading and writing (engine/npy.h). Expected files are assembled by hand from the
// format specification (numpy.lib.format), never from our own writer, so that a bug
// shared by reader and writer cannot hide in a round trip.
#include <catch2/catch.hpp>

#include <stdlib.h>

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
#include "engine/npy.h"

using namespace runway;
using runway::testing::read_bytes;
using runway::testing::TempDir;
using runway::testing::write_bytes;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {



// A .npy file assembled by hand: magic, version major.0, little-endian header length
// (2 bytes for 1.0, 4 bytes otherwise), the header text as given (no padding added),
// then the data bytes.
std::string npy_file(int major, const std::string& header, const std::string& data) {
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  const size_t n = header.size();
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Little-endian bytes of a value (the test host is little-endian, as the engine assumes).
template <typename T> std::string le_bytes(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T> std::string be_bytes(T v) {
  std::string s = le_bytes(v);
  return std::string(s.rbegin(), s.rend());
}

std::string raw_contents(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.numel() * dtype_size(c.dtype()));
}

}  // namespace

TEST_CASE("npy round trip: every dtype and the shapes (), (0,), (3,), (2,3,4)") {
  TempDir dir;
  const std::vector<Shape> shapes{{}, {0}, {3}, {2, 3, 4}, {2, 0, 5}};
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    for (const Shape& shape : shapes) {
      const int64_t n = shape_numel(shape);
      std::vector<double> values;
      for (int64_t i = 0; i < n; ++i) values.push_back(dt == DType::Int64 ? (i * 37 % 11) - 5 : 0.1 * i - 1.3);
      Tensor t = Tensor::from_vector(values, shape, dt);
      if (dt == DType::Int64 && n >= 2) {
        // Values a double cannot carry exactly must survive too.
        t.data<int64_t>()[0] = std::numeric_limits<int64_t>::max();
        t.data<int64_t>()[1] = std::numeric_limits<int64_t>::min() + 1;
      }
      const std::string path = dir / "t.npy";
      write_npy(path, t);
      Tensor r = read_npy(path);
      INFO(dtype_name(dt) << " " << shape_to_string(shape));
      CHECK(r.dtype() == dt);
      CHECK(r.shape() == shape);
      CHECK(r.is_contiguous());
      CHECK(raw_contents(r) == raw_contents(t));
      // Data starts 64-byte aligned after a '\n'-terminated header, as the spec asks.
      const std::string bytes = read_bytes(path);
      const size_t data_offset = bytes.size() - n * dtype_size(dt);
      CHECK(data_offset % 64 == 0);
      CHECK(bytes[data_offset - 1] == '\n');
    }
  }
}

TEST_CASE("npy round trip keeps special float values bit for bit") {
  TempDir dir;
  const double inf = std::numeric_limits<double>::infinity();
  Tensor t = Tensor::from_vector({-0.0, inf, -inf, std::nan(""), 5e-324, 1.7976931348623157e308}, {6},
                                 DType::Float64);
  write_npy(dir / "s.npy", t);
  CHECK(raw_contents(read_npy(dir / "s.npy")) == raw_contents(t));
}

TEST_CASE("npy writes the values of non-contiguous views, not their storage") {
  TempDir dir;
  Tensor base = Tensor::arange(0, 12, 1, DType::Float64).reshape({3, 4});
  Tensor view = base.transpose(0, 1).slice(0, 1, 3);  // (2, 3), strided
  write_npy(dir / "v.npy", view);
  Tensor r = read_npy(dir / "v.npy");
  CHECK(r.shape() == Shape{2, 3});
  CHECK(r.to_vector() == std::vector<double>{1, 5, 9, 2, 6, 10});
}

TEST_CASE("npy writer produces exactly the bytes the format spec prescribes") {
  TempDir dir;
  // numpy.save of np.array([1.0, 2.0]) in format 1.0: the magic, version 1.0, header
  // length 118 (0x76) little-endian, the dict (57 characters), 60 spaces and '\n' so
  // that 10 + 118 = 128 is a multiple of 64, then 1.0 and 2.0 as little-endian doubles.
  const std::string expected =
      std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
      "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }" + std::string(60, ' ') + "\n" +
      std::string("\x00\x00\x00\x00\x00\x00\xf0\x3f", 8) +  // 1.0
      std::string("\x00\x00\x00\x00\x00\x00\x00\x40", 8);   // 2.0
  REQUIRE(expected.size() == 128 + 16);
  write_npy(dir / "a.npy", Tensor::from_vector({1.0, 2.0}, {2}, DType::Float64));
  CHECK(read_bytes(dir / "a.npy") == expected);

  // A float32 scalar: shape () and 0.5f, whose bits are 0x3f000000.
  const std::string scalar =
      std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
      "{'descr': '<f4', 'fortran_order': False, 'shape': (), }" + std::string(62, ' ') + "\n" +
      std::string("\x00\x00\x00\x3f", 4);
  write_npy(dir / "s.npy", Tensor::scalar(0.5, DType::Float32));
  CHECK(read_bytes(dir / "s.npy") == scalar);

  // int64 (2, 3): the shape tuple is "(2, 3)".
  std::string ints = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                     "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }" + std::string(58, ' ') + "\n";
  for (int64_t v : {1, -2, 3, -4, 5, -6}) ints += le_bytes<int64_t>(v);
  write_npy(dir / "i.npy", Tensor::from_indices({1, -2, 3, -4, 5, -6}, {2, 3}));
  CHECK(read_bytes(dir / "i.npy") == ints);

  // And the reader accepts the hand-written file.
  write_bytes(dir / "hand.npy", expected);
  Tensor r = read_npy(dir / "hand.npy");
  CHECK(r.dtype() == DType::Float64);
  CHECK(r.shape() == Shape{2});
  CHECK(r.to_vector() == std::vector<double>{1.0, 2.0});
}

TEST_CASE("npy reads fortran_order True files into row-major tensors") {
  TempDir dir;
  // [[1, 2, 3], [4, 5, 6]] stored column by column.
  std::string data;
  for (double v : {1, 4, 2, 5, 3, 6}) data += le_bytes(v);
  write_bytes(dir / "f.npy", npy_file(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n", data));
  Tensor r = read_npy(dir / "f.npy");
  CHECK(r.shape() == Shape{2, 3});
  CHECK(r.is_contiguous());
  CHECK(r.to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});

  // Rank 3, int64: element (i, j, k) = 100 i + 10 j + k sits at i + 2 j + 6 k.
  std::vector<int64_t> col(2 * 3 * 4);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) col[i + 2 * j + 6 * k] = 100 * i + 10 * j + k;
  data.clear();
  for (int64_t v : col) data += le_bytes(v);
  write_bytes(dir / "f3.npy", npy_file(1, "{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3, 4)}", data));
  Tensor r3 = read_npy(dir / "f3.npy");
  REQUIRE(r3.shape() == Shape{2, 3, 4});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) CHECK(r3.at({i, j, k}) == 100 * i + 10 * j + k);

  // Rank 0 and 1 are the same in either order.
  write_bytes(dir / "f1.npy", npy_file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,)}",
                                       le_bytes(1.5f) + le_bytes(-2.0f)));
  CHECK(read_npy(dir / "f1.npy").to_vector() == std::vector<double>{1.5, -2.0});
}

TEST_CASE("npy reads big-endian data and every byte-order marker") {
  TempDir dir;
  write_bytes(dir / "bf8.npy", npy_file(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
                                        be_bytes(1.25) + be_bytes(-3.5)));
  Tensor a = read_npy(dir / "bf8.npy");
  CHECK(a.dtype() == DType::Float64);
  CHECK(a.to_vector() == std::vector<double>{1.25, -3.5});

  write_bytes(dir / "bf4.npy", npy_file(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }",
                                        be_bytes(0.5f) + be_bytes(2.0f) + be_bytes(-8.0f)));
  Tensor b = read_npy(dir / "bf4.npy");
  CHECK(b.dtype() == DType::Float32);
  CHECK(b.to_vector() == std::vector<double>{0.5, 2.0, -8.0});

  write_bytes(dir / "bi8.npy", npy_file(1, "{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }",
                                        be_bytes<int64_t>(0x0102030405060708) + be_bytes<int64_t>(-2)));
  CHECK(read_npy(dir / "bi8.npy").to_indices() == std::vector<int64_t>{0x0102030405060708, -2});

  // Big-endian and Fortran order together: [[1, 2], [3, 4]] column-major.
  write_bytes(dir / "bf.npy", npy_file(1, "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }",
                                       be_bytes(1.0) + be_bytes(3.0) + be_bytes(2.0) + be_bytes(4.0)));
  CHECK(read_npy(dir / "bf.npy").to_vector() == std::vector<double>{1, 2, 3, 4});

  // '|' (not applicable) and '=' (native) mean little-endian on this host, as does no marker.
  for (const char* descr : {"|f8", "=f8", "f8"}) {
    write_bytes(dir / "n.npy", npy_file(1, fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': (1,)}}", descr),
                                        le_bytes(7.0)));
    CHECK(read_npy(dir / "n.npy").to_vector() == std::vector<double>{7.0});
  }
}

TEST_CASE("npy reads format versions 2.0 and 3.0 and any dict spelling") {
  TempDir dir;
  const std::string data = le_bytes(1.0f) + le_bytes(2.0f);
  const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + std::string(50, ' ') + "\n";
  for (int major : {2, 3}) {
    write_bytes(dir / "v.npy", npy_file(major, header, data));
    Tensor r = read_npy(dir / "v.npy");
    CHECK(r.shape() == Shape{2});
    CHECK(r.to_vector() == std::vector<double>{1.0, 2.0});
  }
  // Keys in another order, double quotes, odd spacing, no trailing comma, Python 2 longs.
  for (const std::string h : {"{ \"shape\" : ( 2 , ) , \"fortran_order\":False,'descr':'<f4' }",
                              "{'shape': (2L,), 'descr': \"<f4\", 'fortran_order': False}\n",
                              "{'fortran_order':False,'shape':(2,),'descr':'<f4',}    \n"}) {
    write_bytes(dir / "h.npy", npy_file(1, h, data));
    CHECK(read_npy(dir / "h.npy").to_vector() == std::vector<double>{1.0, 2.0});
  }
  // (x) is not a tuple in Python, so "(2)" is not a shape.
  write_bytes(dir / "p.npy", npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2)}", data));
  CHECK_THROWS_WITH(read_npy(dir / "p.npy"), Contains("'shape' must be a tuple"));
}

TEST_CASE("npy reports every malformed input with the path and the problem") {
  TempDir dir;
  const std::string good_data = le_bytes(1.0) + le_bytes(2.0);
  auto header = [](const std::string& descr, const std::string& fortran, const std::string& shape) {
    return fmt::format("{{'descr': {}, 'fortran_order': {}, 'shape': {}, }}\n", descr, fortran, shape);
  };
  auto check_error = [&](const std::string& name, const std::string& bytes, const std::string& problem) {
    const std::string path = dir / name;
    write_bytes(path, bytes);
    INFO(name);
    CHECK_THROWS_AS(read_npy(path), runway::Error);
    CHECK_THROWS_WITH(read_npy(path), Contains(path) && Contains(problem));
  };

  const std::string missing = dir / "does_not_exist.npy";
  CHECK_THROWS_WITH(read_npy(missing), Contains(missing) && Contains("cannot open") &&
                                           Contains("No such file or directory"));
  CHECK_THROWS_WITH(read_npy(dir.path), Contains(dir.path) && Contains("is a directory"));

  check_error("empty.npy", "", "too short (0 bytes)");
  check_error("magic.npy", std::string("\x93NUMPZ\x01\x00\x02\x00{}", 12), "bad magic string");
  check_error("text.npy", "hello, this is not an array\n", "bad magic string");
  check_error("v4.npy", npy_file(4, header("'<f8'", "False", "(2,)"), good_data), "unsupported .npy format version 4.0");
  check_error("v11.npy", std::string("\x93NUMPY\x01\x01\x00\x00", 10), "unsupported .npy format version 1.1");
  check_error("hlen.npy", std::string("\x93NUMPY\x02\x00\x10\x00", 10), "too short");
  check_error("trunc_header.npy", npy_file(1, header("'<f8'", "False", "(2,)"), "").substr(0, 30),
              "header is truncated");

  check_error("list.npy", npy_file(1, "[1, 2]", good_data), "not a dict");
  check_error("syntax.npy", npy_file(1, "{'descr' '<f8'}", good_data), "not a valid Python dict literal");
  check_error("unterminated.npy", npy_file(1, "{'descr: '<f8'}", good_data), "not a valid Python dict literal");
  check_error("name.npy", npy_file(1, "{'descr': float64}", good_data), "unexpected name 'float64'");
  check_error("after.npy", npy_file(1, header("'<f8'", "False", "(2,)") + "x", good_data), "after the closing '}'");
  check_error("deep.npy", npy_file(1, std::string(1000, '(') + std::string(1000, ')'), good_data), "nested too deeply");
  check_error("nokey.npy", npy_file(1, "{'descr': '<f8', 'fortran_order': False}", good_data),
              "missing the key 'shape'");
  check_error("extra_key.npy", npy_file(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 1}", good_data),
              "unexpected key 'x'");
  check_error("dup_key.npy", npy_file(1, "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}", good_data),
              "key 'descr' twice");

  check_error("i4.npy", npy_file(1, header("'<i4'", "False", "(2,)"), good_data), "unsupported dtype '<i4'");
  check_error("i4b.npy", npy_file(1, header("'<i4'", "False", "(2,)"), good_data), "supported: float32 'f4', float64 'f8', int64 'i8'");
  check_error("c16.npy", npy_file(1, header("'<c16'", "False", "(1,)"), good_data), "unsupported dtype '<c16'");
  check_error("obj.npy", npy_file(1, header("'|O'", "False", "(2,)"), good_data), "unsupported dtype '|O'");
  check_error("struct.npy", npy_file(1, header("[('a', '<f8')]", "False", "(2,)"), good_data), "structured dtypes");

  check_error("fortran.npy", npy_file(1, header("'<f8'", "'yes'", "(2,)"), good_data), "'fortran_order' must be True or False");
  check_error("neg.npy", npy_file(1, header("'<f8'", "False", "(-2,)"), good_data), "negative dimension -2");
  check_error("float_dim.npy", npy_file(1, header("'<f8'", "False", "(2.5,)"), good_data), "non-integer dimension (the float 2.5)");
  check_error("str_dim.npy", npy_file(1, header("'<f8'", "False", "('2',)"), good_data), "non-integer dimension");
  check_error("shape_int.npy", npy_file(1, header("'<f8'", "False", "2"), good_data), "'shape' must be a tuple");
  check_error("huge.npy", npy_file(1, header("'<f8'", "False", "(100000000000000000000,)"), good_data), "too large");
  check_error("overflow.npy", npy_file(1, header("'<f8'", "False", "(4294967296, 4294967296)"), good_data), "too large");
  // A large but representable shape must fail on the size check, before allocating.
  check_error("big.npy", npy_file(1, header("'<f8'", "False", "(1099511627776, 1024)"), good_data),
              "data is shorter than the header says");

  check_error("short.npy", npy_file(1, header("'<f8'", "False", "(3,)"), good_data),
              "needs 24 bytes, the file has 16");
  check_error("short32.npy", npy_file(1, header("'<f4'", "False", "(2, 3)"), good_data),
              "shape (2, 3) of float32 needs 24 bytes, the file has 16");
  check_error("extra.npy", npy_file(1, header("'<f8'", "False", "(1,)"), good_data), "8 extra bytes after the data");
  check_error("extra0.npy", npy_file(1, header("'<f8'", "False", "()"), good_data), "8 extra bytes after the data");
}

TEST_CASE("npy reader never crashes on truncated or corrupted files") {
  TempDir dir;
  const std::string path = dir / "fuzz.npy";
  std::string valid = npy_file(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }\n",
                               le_bytes(1.0) + le_bytes(2.0) + le_bytes(3.0) + le_bytes(4.0));
  // Every strict prefix of a valid file is an error, and a runway::Error at that.
  for (size_t n = 0; n < valid.size(); ++n) {
    write_bytes(path, valid.substr(0, n));
    INFO("prefix of " << n << " bytes");
    CHECK_THROWS_AS(read_npy(path), runway::Error);
  }
  // Random corruptions of the prefix and header: success or a runway::Error, nothing else.
  std::mt19937 rng(1234);
  const std::string alphabet = "{}()[],:'\" 0123456789-+.eLTrueFalsNonedscrphaftio_<>|=f48\n\x93\xff";
  const size_t header_end = valid.size() - 32;
  int errors = 0, successes = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % header_end;
      switch (rng() % 3) {
        case 0: bytes[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: bytes[at] = static_cast<char>(rng() & 0xff); break;
        default: bytes.erase(at, 1 + rng() % 3); break;
      }
    }
    write_bytes(path, bytes);
    try {
      Tensor t = read_npy(path);
      ++successes;
      CHECK(t.numel() * static_cast<int64_t>(dtype_size(t.dtype())) <= static_cast<int64_t>(bytes.size()));
    } catch (const runway::Error& e) {
      ++errors;
      CHECK_THAT(e.what(), Contains(path));
    }
  }
  CHECK(errors > 0);
  // Random printable garbage as the whole header.
  for (int iter = 0; iter < 500; ++iter) {
    std::string h;
    const size_t len = rng() % 80;
    for (size_t i = 0; i < len; ++i) h += alphabet[rng() % alphabet.size()];
    write_bytes(path, npy_file(1 + static_cast<int>(rng() % 3), h, std::string(rng() % 20, '\0')));
    try {
      read_npy(path);
    } catch (const runway::Error& e) {
      CHECK_THAT(e.what(), Contains(path));
    }
  }
}

TEST_CASE("npy writes atomically and reports failures with the path") {
  TempDir dir;
  auto entries = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  // Overwriting an existing file replaces it and leaves no temporary files behind.
  write_npy(dir / "x.npy", Tensor::from_vector({1, 2, 3}, {3}, DType::Float64));
  write_npy(dir / "x.npy", Tensor::from_vector({4, 5}, {2}, DType::Float32));
  CHECK(read_npy(dir / "x.npy").to_vector() == std::vector<double>{4, 5});
  CHECK(entries() == std::vector<std::string>{"x.npy"});

  // A missing directory: the error names the path; nothing is created.
  const std::string nowhere = dir / "no_such_dir/y.npy";
  CHECK_THROWS_WITH(write_npy(nowhere, Tensor::zeros({2})), Contains(nowhere) && Contains("No such file or directory"));
  // The target is a directory: the rename fails and the temporary file is removed.
  fs::create_directory(dir / "sub");
  CHECK_THROWS_WITH(write_npy(dir / "sub", Tensor::zeros({2})), Contains(dir / "sub") && Contains("cannot move"));
  CHECK(entries() == std::vector<std::string>{"sub", "x.npy"});
  CHECK(read_npy(dir / "x.npy").to_vector() == std::vector<double>{4, 5});

  CHECK_THROWS_WITH(write_npy(dir / "u.npy", Tensor()), Contains("u.npy") && Contains("undefined"));
}
