// NumPy .npy reading and writing; see npy.h and
// https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
//
// Layout of a .npy file:
//   "\x93NUMPY"  major minor  HEADER_LEN  header  data
//   6 bytes      1     1      2 bytes (v1.0) or 4 bytes (v2.0, v3.0), little-endian
// The header is a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': ...}
// (latin-1 in v1/v2, utf-8 in v3), padded with spaces and ended by '\n'. NumPy reads
// it with ast.literal_eval, so any literal syntax is legal: keys in any order, either
// quote style, arbitrary spacing, trailing commas. We parse that subset of Python
// literals properly rather than pattern-matching NumPy's own output.
#include "engine/npy.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "engine/file_io.h"

namespace runway {

// Tensors hold native-endian data and we write '<' descriptors from raw memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy.cpp assumes a little-endian host");

namespace {

constexpr char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
constexpr size_t kAlign = 64;  // data offset alignment NumPy uses (ARRAY_ALIGN)
constexpr const char* kSupported = "float32 'f4', float64 'f8', int64 'i8' (byte order '<', '>', '|' or '=')";

std::string excerpt(const std::string& s, size_t max_len = 80) { return printable_excerpt(s, max_len); }

// ---- a parser for the Python literals that can appear in a .npy header -----------------

struct PyValue {
  enum class Kind { Str, Bool, None, Int, Float, Tuple, List, Dict };
  Kind kind = Kind::None;
  std::string text;             // Str: the contents; Int/Float: the literal as written
  bool boolean = false;         // Bool
  std::vector<PyValue> items;   // Tuple, List; Dict: alternating key, value

  std::string describe() const {
    switch (kind) {
      case Kind::Str: return fmt::format("the string '{}'", excerpt(text, 40));
      case Kind::Bool: return boolean ? "True" : "False";
      case Kind::None: return "None";
      case Kind::Int: return fmt::format("the integer {}", text);
      case Kind::Float: return fmt::format("the float {}", text);
      case Kind::Tuple: return "a tuple";
      case Kind::List: return "a list";
      case Kind::Dict: return "a dict";
    }
    return "?";
  }
};

// Recursive descent over str/bytes-free Python literals: strings, True/False/None,
// numbers, tuples, lists and dicts. Errors throw with the position in the header.
class LiteralParser {
 public:
  explicit LiteralParser(const std::string& text) : s_(text) {}

  // Parses the whole header: one value followed only by whitespace.
  PyValue parse_header() {
    PyValue v = value(0);
    skip_space();
    if (pos_ != s_.size())
      error(fmt::format("unexpected '{}' after the closing '}}'", excerpt(s_.substr(pos_, 1))));
    return v;
  }

 private:
  // Nesting is bounded so that garbage like "((((((..." cannot exhaust the stack.
  static constexpr int kMaxDepth = 32;

  [[noreturn]] void error(const std::string& what) const {
    throw std::invalid_argument(fmt::format("{} at offset {}", what, pos_));
  }

  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' ||
                                s_[pos_] == '\r' || s_[pos_] == '\f' || s_[pos_] == '\v'))
      ++pos_;
  }

  bool peek(char c) {
    skip_space();
    return pos_ < s_.size() && s_[pos_] == c;
  }

  void expect(char c, const char* context) {
    skip_space();
    if (pos_ >= s_.size()) error(fmt::format("header ends where '{}' was expected {}", c, context));
    if (s_[pos_] != c)
      error(fmt::format("expected '{}' {} but found '{}'", c, context, excerpt(s_.substr(pos_, 1))));
    ++pos_;
  }

  PyValue value(int depth) {
    if (depth > kMaxDepth) error("literal nested too deeply");
    skip_space();
    if (pos_ >= s_.size()) error("header ends where a value was expected");
    const char c = s_[pos_];
    if (c == '\'' || c == '"') return string_literal();
    if (c == '(') return sequence(')', PyValue::Kind::Tuple, depth);
    if (c == '[') return sequence(']', PyValue::Kind::List, depth);
    if (c == '{') return dict(depth);
    if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9')) return number();
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') return name();
    error(fmt::format("unexpected '{}' where a value was expected", excerpt(s_.substr(pos_, 1))));
  }

  PyValue string_literal() {
    const char quote = s_[pos_++];
    PyValue v;
    v.kind = PyValue::Kind::Str;
    while (true) {
      if (pos_ >= s_.size()) error("unterminated string literal");
      char c = s_[pos_++];
      if (c == quote) break;
      if (c == '\n') error("newline inside a string literal");
      if (c == '\\') {
        if (pos_ >= s_.size()) error("unterminated string literal");
        c = s_[pos_++];  // \\, \', \" keep the character; other escapes never occur in a descr
      }
      v.text += c;
    }
    return v;
  }

  PyValue number() {
    const size_t start = pos_;
    bool is_float = false;
    if (s_[pos_] == '-' || s_[pos_] == '+') ++pos_;
    size_t digits = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_, ++digits;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      is_float = true;
      ++pos_;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_, ++digits;
    }
    if (digits == 0) error(fmt::format("malformed number '{}'", excerpt(s_.substr(start, pos_ - start + 1))));
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      is_float = true;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '-' || s_[pos_] == '+')) ++pos_;
      size_t exp_digits = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_, ++exp_digits;
      if (exp_digits == 0) error(fmt::format("malformed number '{}'", excerpt(s_.substr(start, pos_ - start))));
    }
    PyValue v;
    v.kind = is_float ? PyValue::Kind::Float : PyValue::Kind::Int;
    v.text = s_.substr(start, pos_ - start);
    // Files written by NumPy under Python 2 may spell dimensions as long literals, "3L".
    if (!is_float && pos_ < s_.size() && (s_[pos_] == 'L' || s_[pos_] == 'l')) ++pos_;
    if (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
      error(fmt::format("malformed number '{}'", excerpt(s_.substr(start, pos_ - start + 1))));
    return v;
  }

  PyValue name() {
    const size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) ++pos_;
    const std::string word = s_.substr(start, pos_ - start);
    PyValue v;
    if (word == "True" || word == "False") {
      v.kind = PyValue::Kind::Bool;
      v.boolean = word == "True";
    } else if (word == "None") {
      v.kind = PyValue::Kind::None;
    } else {
      pos_ = start;
      error(fmt::format("unexpected name '{}' (only literals are allowed)", excerpt(word, 40)));
    }
    return v;
  }

  // Tuples and lists: comma-separated values, optional trailing comma. As in Python,
  // "(x)" is just x, not a one-element tuple.
  PyValue sequence(char close, PyValue::Kind kind, int depth) {
    ++pos_;  // the opening bracket
    PyValue v;
    v.kind = kind;
    bool saw_comma = false;
    while (!peek(close)) {
      v.items.push_back(value(depth + 1));
      if (peek(close)) break;
      expect(',', kind == PyValue::Kind::Tuple ? "between tuple items" : "between list items");
      saw_comma = true;
    }
    ++pos_;  // the closing bracket
    if (kind == PyValue::Kind::Tuple && v.items.size() == 1 && !saw_comma) return v.items[0];
    return v;
  }

  PyValue dict(int depth) {
    ++pos_;  // '{'
    PyValue v;
    v.kind = PyValue::Kind::Dict;
    while (!peek('}')) {
      v.items.push_back(value(depth + 1));
      expect(':', "after a dict key");
      v.items.push_back(value(depth + 1));
      if (peek('}')) break;
      expect(',', "between dict entries");
    }
    ++pos_;  // '}'
    return v;
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// ---- header interpretation ---------------------------------------------------------------

struct NpyHeader {
  DType dtype = DType::Float64;
  bool big_endian = false;
  bool fortran_order = false;
  Shape shape;
};

// `fail` reports a problem with the file being read.
template <typename Fail>
NpyHeader interpret_header(const std::string& text, const Fail& fail) {
  PyValue dict;
  try {
    dict = LiteralParser(text).parse_header();
  } catch (const std::invalid_argument& e) {
    fail(fmt::format("header is not a valid Python dict literal: {} (header: \"{}\")", e.what(),
                     excerpt(text)));
  }
  if (dict.kind != PyValue::Kind::Dict)
    fail(fmt::format("header is {}, not a dict (header: \"{}\")", dict.describe(), excerpt(text)));

  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (size_t i = 0; i + 1 < dict.items.size(); i += 2) {
    const PyValue& key = dict.items[i];
    if (key.kind != PyValue::Kind::Str)
      fail(fmt::format("header dict has a non-string key ({})", key.describe()));
    const PyValue** slot = key.text == "descr"           ? &descr
                           : key.text == "fortran_order" ? &fortran
                           : key.text == "shape"         ? &shape
                                                         : nullptr;
    if (!slot)
      fail(fmt::format("header has an unexpected key '{}' (a .npy header has exactly 'descr', "
                       "'fortran_order' and 'shape')", excerpt(key.text, 40)));
    if (*slot) fail(fmt::format("header has the key '{}' twice", key.text));
    *slot = &dict.items[i + 1];
  }
  for (auto [ptr, name] : {std::pair{descr, "descr"}, {fortran, "fortran_order"}, {shape, "shape"}})
    if (!ptr) fail(fmt::format("header is missing the key '{}' (header: \"{}\")", name, excerpt(text)));

  NpyHeader h;
  // descr: a type string such as '<f8'. Structured dtypes are lists; reject them by name.
  if (descr->kind != PyValue::Kind::Str)
    fail(fmt::format("unsupported dtype: 'descr' is {} (structured dtypes are not supported; "
                     "supported: {})", descr->describe(), kSupported));
  std::string code = descr->text;
  char order = '|';
  if (!code.empty() && (code[0] == '<' || code[0] == '>' || code[0] == '|' || code[0] == '=')) {
    order = code[0];
    code = code.substr(1);
  }
  if (code == "f4") h.dtype = DType::Float32;
  else if (code == "f8") h.dtype = DType::Float64;
  else if (code == "i8") h.dtype = DType::Int64;
  else fail(fmt::format("unsupported dtype '{}' (supported: {})", excerpt(descr->text, 40), kSupported));
  h.big_endian = order == '>';

  if (fortran->kind != PyValue::Kind::Bool)
    fail(fmt::format("'fortran_order' must be True or False, got {}", fortran->describe()));
  h.fortran_order = fortran->boolean;

  if (shape->kind != PyValue::Kind::Tuple)
    fail(fmt::format("'shape' must be a tuple of integers, got {}", shape->describe()));
  // The product of the non-zero dims must fit in int64, so that strides never overflow.
  std::string dims_text;
  for (const PyValue& d : shape->items) dims_text += (dims_text.empty() ? "" : ", ") + d.text;
  int64_t extent = 1;
  for (const PyValue& d : shape->items) {
    if (d.kind != PyValue::Kind::Int)
      fail(fmt::format("'shape' has a non-integer dimension ({})", d.describe()));
    errno = 0;
    const long long n = std::strtoll(d.text.c_str(), nullptr, 10);
    if (errno != ERANGE && n < 0) fail(fmt::format("'shape' has a negative dimension {}", d.text));
    if (errno == ERANGE || n < 0 || (n > 0 && extent > std::numeric_limits<int64_t>::max() / n))
      fail(fmt::format("shape ({}) is too large", excerpt(dims_text, 200)));
    h.shape.push_back(n);
    if (n > 0) extent *= n;
  }
  return h;
}

void byte_swap(void* data, size_t count, size_t width) {
  auto* p = static_cast<unsigned char*>(data);
  for (size_t i = 0; i < count; ++i, p += width)
    for (size_t a = 0, b = width - 1; a < b; ++a, --b) std::swap(p[a], p[b]);
}

}  // namespace

// ---- reading -----------------------------------------------------------------------------

namespace {

// The reader proper, over an InputFile or a MemoryInput; `path` names the source in errors.
template <typename Input>
Tensor read_npy_from(Input& in, const std::string& path) {
  auto fail = [&path](const std::string& what) -> void {
    throw Error(fmt::format("read_npy: '{}': {}", path, what));
  };

  const uint64_t file_size = in.size();
  auto read_exact = [&in](void* dst, size_t n, const char* what) { in.read_exact(dst, n, std::string("the ") + what); };

  // Magic string and version.
  if (file_size < 10)
    fail(fmt::format("file is too short ({} bytes) to be a .npy file (the smallest header is "
                     "10 bytes before the dict)", file_size));
  unsigned char prefix[8];
  read_exact(prefix, 8, "magic string");
  if (std::memcmp(prefix, kMagic, 6) != 0)
    fail(fmt::format("not a .npy file: bad magic string \"{}\" (expected \"\\x93NUMPY\")",
                     excerpt(std::string(reinterpret_cast<char*>(prefix), 6))));
  const int major = prefix[6], minor = prefix[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(fmt::format("unsupported .npy format version {}.{} (supported: 1.0, 2.0, 3.0)", major, minor));

  // Header length: uint16 in version 1.0, uint32 from 2.0 on; little-endian either way.
  const size_t len_bytes = major == 1 ? 2 : 4;
  unsigned char len_buf[4] = {0, 0, 0, 0};
  if (file_size < 8 + len_bytes)
    fail(fmt::format("file is too short ({} bytes) to hold a version {}.0 header length", file_size, major));
  read_exact(len_buf, len_bytes, "header length");
  uint64_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) header_len |= static_cast<uint64_t>(len_buf[i]) << (8 * i);
  const uint64_t data_offset = 8 + len_bytes + header_len;
  if (data_offset > file_size)
    fail(fmt::format("header is truncated: it declares {} bytes but the file has only {} after "
                     "the length field", header_len, file_size - 8 - len_bytes));
  std::string header(header_len, '\0');
  read_exact(header.data(), header.size(), "header");

  const NpyHeader h = interpret_header(header, [&](const std::string& what) {
    fail(what);
  });

  // Size check before allocating: the data must be exactly numel * itemsize bytes.
  // (interpret_header guarantees numel fits in int64; bytes are bounded by the file size.)
  const int64_t numel = shape_numel(h.shape);
  const size_t item = dtype_size(h.dtype);
  const uint64_t actual = file_size - data_offset;
  // numel < 2^63 and itemsize <= 8, so only the byte count itself can overflow.
  const bool overflow = static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / item;
  const uint64_t expected = overflow ? 0 : static_cast<uint64_t>(numel) * item;
  if (overflow || actual < expected)
    fail(fmt::format("data is shorter than the header says: shape {} of {} needs {} bytes, the "
                     "file has {}", shape_to_string(h.shape), dtype_name(h.dtype),
                     overflow ? fmt::format("{} x {}", numel, item) : std::to_string(expected), actual));
  if (actual > expected)
    fail(fmt::format("file has {} extra bytes after the data (shape {} of {} needs {} bytes, the "
                     "file has {})", actual - expected, shape_to_string(h.shape), dtype_name(h.dtype),
                     expected, actual));

  // Column-major data of shape (d0, ..., dn) is row-major data of shape (dn, ..., d0);
  // read it as that, then permute the axes back and make it contiguous.
  Shape stored_shape = h.shape;
  if (h.fortran_order) std::reverse(stored_shape.begin(), stored_shape.end());
  Tensor t = Tensor::empty(stored_shape, h.dtype);
  read_exact(t.raw_data(), expected, "data");
  if (h.big_endian) byte_swap(t.raw_data(), static_cast<size_t>(numel), item);
  if (h.fortran_order && h.shape.size() > 1) {
    std::vector<int64_t> dims(h.shape.size());
    for (size_t i = 0; i < dims.size(); ++i) dims[i] = static_cast<int64_t>(dims.size() - 1 - i);
    t = t.permute(dims).contiguous();
  }
  return t;
}

}  // namespace

Tensor read_npy(const std::string& path) {
  InputFile in(path, "read_npy", "a .npy file");
  return read_npy_from(in, path);
}

Tensor read_npy_bytes(const void* data, size_t size, const std::string& name) {
  MemoryInput in(data, size, "read_npy", name);
  return read_npy_from(in, name);
}

// ---- writing -----------------------------------------------------------------------------

namespace {

// The header bytes after the magic string: version, length and the padded dict.
std::string npy_prefix_and_header(const Tensor& t) {
  const char* descr = t.dtype() == DType::Float32 ? "<f4" : t.dtype() == DType::Float64 ? "<f8" : "<i8";
  std::string shape = "(";
  for (size_t i = 0; i < t.shape().size(); ++i)
    shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
  if (t.shape().size() == 1) shape += ",";  // Python's one-element tuple
  shape += ")";
  // The keys in NumPy's order (sorted), with its trailing ", " before the brace.
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);

  // Version 1.0 has a 16-bit header length; fall back to 2.0 for enormous ranks.
  int major = 1;
  size_t fixed = sizeof(kMagic) + 2 + 2;
  size_t padded = dict.size() + 1;  // + '\n'
  padded += (kAlign - (fixed + padded) % kAlign) % kAlign;
  if (padded > 0xffff) {
    major = 2;
    fixed = sizeof(kMagic) + 2 + 4;
    padded = dict.size() + 1;
    padded += (kAlign - (fixed + padded) % kAlign) % kAlign;
  }
  std::string out(kMagic, sizeof(kMagic));
  out += static_cast<char>(major);
  out += '\0';
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out += static_cast<char>((padded >> (8 * i)) & 0xff);
  out += dict;
  out.append(padded - dict.size() - 1, ' ');
  out += '\n';
  return out;
}

}  // namespace

void write_npy(const std::string& path, const Tensor& t) {
  auto fail = [&path](const std::string& what) -> void {
    throw Error(fmt::format("write_npy: '{}': {}", path, what));
  };
  if (!t.defined()) fail("the tensor is undefined");
  const Tensor c = t.detach().to(Device::CPU).contiguous();
  const std::string head = npy_prefix_and_header(c);
  const size_t data_bytes = static_cast<size_t>(c.numel()) * dtype_size(c.dtype());

  write_file_atomic(path, "write_npy", [&](const ByteSink& write) {
    write(head.data(), head.size());
    write(c.raw_data(), data_bytes);
  });
}

}  // namespace runway
