// safetensors reading and writing; see safetensors.h and
// https://huggingface.co/docs/safetensors (reference implementation:
// https://github.com/huggingface/safetensors, safetensors/src/tensor.rs).
//
// The reference writer emits compact JSON with "__metadata__" first and each entry's keys
// in the order dtype, shape, data_offsets, and pads the header with spaces to a multiple
// of 8 bytes. Its reader caps the header at 100,000,000 bytes and requires the tensors,
// sorted by data_offsets, to tile the data section exactly. We write the same way and
// check the same rules, but accept any key order and any whitespace, as any JSON reader
// would.
#include "engine/safetensors.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <tuple>

#include "engine/file_io.h"

namespace runway {

// Tensors hold native-endian data and the format is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.cpp assumes a little-endian host");

namespace {

// Objects are std::maps: nlohmann::ordered_json would keep the key order, but its
// lookups are linear, so a header of a million keys would take hours to parse. The
// SAX scan below records the order of the tensor entries instead.
using Json = nlohmann::json;

constexpr uint64_t kMaxHeader = 100'000'000;  // the reference reader's MAX_HEADER_SIZE
constexpr size_t kAlign = 8;                   // data starts at a multiple of this
constexpr int kMaxDepth = 16;                  // a valid header nests 3 deep
constexpr const char* kSupported = "F32, F64, I64";
constexpr const char* kMetadataKey = "__metadata__";

std::string excerpt(const std::string& s, size_t max_len = 80) { return printable_excerpt(s, max_len); }

const char* st_dtype_name(DType dt) {
  switch (dt) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int64: return "I64";
  }
  return "?";
}

// A JSON value as words, for "expected X, got Y" messages.
std::string describe(const Json& j) {
  const auto text = [&j] { return excerpt(j.dump(-1, ' ', false, Json::error_handler_t::replace), 40); };
  switch (j.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return fmt::format("the boolean {}", text());
    case Json::value_t::string: return fmt::format("the string {}", text());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return fmt::format("the integer {}", text());
    case Json::value_t::number_float: return fmt::format("the number {}", text());
    case Json::value_t::array: return fmt::format("an array ({})", text());
    case Json::value_t::object: return "an object";
    default: return "an unsupported JSON value";
  }
}

std::string shape_text(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// "8 + 56 + 16 = 80" without overflowing.
std::string sum_text(uint64_t a, uint64_t b, uint64_t c) {
  if (b > std::numeric_limits<uint64_t>::max() - a || c > std::numeric_limits<uint64_t>::max() - a - b)
    return fmt::format("{} + {} + {} (more than 2^64)", a, b, c);
  return std::to_string(a + b + c);
}

// Throws an Error that names the function and the file.
struct Failer {
  const char* fn;
  const std::string& path;
  [[noreturn]] void operator()(const std::string& what) const {
    throw Error(fmt::format("{}: '{}': {}", fn, path, what));
  }
};

// One tensor as the header describes it.
struct Entry {
  std::string name;
  DType dtype = DType::Float32;
  Shape shape;
  uint64_t begin = 0, end = 0;
  size_t json_index = 0;  // position in the header, to order zero-size tensors stably
};

// A first, SAX pass over the header that builds nothing: it rejects syntax errors,
// duplicate keys (which a JSON object may not meaningfully hold and which would
// silently shadow a tensor) and absurd nesting (so garbage cannot exhaust memory), and
// records the keys of the top-level object in header order.
class HeaderScan : public nlohmann::json_sax<Json> {
 public:
  std::vector<std::string> top_keys;
  std::string problem;  // why the scan stopped

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    if (!enter()) return false;
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (!keys_.back().insert(key).second) {
      problem = fmt::format("header has the key \"{}\" twice in one object", excerpt(key, 60));
      return false;
    }
    if (depth_ == 1) top_keys.push_back(key);
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    return leave();
  }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override { return leave(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    problem = fmt::format("header is not valid JSON: {}", excerpt(e.what(), 200));
    return false;
  }

 private:
  bool enter() {
    if (++depth_ > kMaxDepth) {
      problem = fmt::format("header JSON is nested more than {} levels deep", kMaxDepth);
      return false;
    }
    return true;
  }
  bool leave() {
    --depth_;
    return true;
  }
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // one set per open object
};

// Parses the header text into JSON. `top_keys` receives the keys of the top-level
// object in the order they appear. The SAX scan vets the text first, so the DOM parse
// only ever sees well-formed, shallow JSON without duplicate keys. (nlohmann's callback
// parser could do both in one pass, but its end_object rescans the parent object for
// discarded values, which is quadratic in the number of tensors.)
Json parse_header_json(const std::string& text, std::vector<std::string>& top_keys, const Failer& fail) {
  // nlohmann::json stops at a NUL byte and skips a byte order mark; JSON allows neither.
  const size_t nul = text.find('\0');
  if (nul != std::string::npos)
    fail(fmt::format("header is not valid JSON: it has a NUL byte at offset {} (header: \"{}\")", nul, excerpt(text)));
  if (text.rfind("\xef\xbb\xbf", 0) == 0)
    fail(fmt::format("header is not valid JSON: it starts with a byte order mark (header: \"{}\")", excerpt(text)));
  HeaderScan scan;
  if (!Json::sax_parse(text.begin(), text.end(), &scan)) {
    if (scan.problem.empty()) scan.problem = "header is not valid JSON";
    fail(fmt::format("{} (header: \"{}\")", scan.problem, excerpt(text)));
  }
  top_keys = std::move(scan.top_keys);
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {  // not expected once the scan has passed
    fail(fmt::format("header is not valid JSON: {} (header: \"{}\")", excerpt(e.what(), 200), excerpt(text)));
  }
}

// Checks one header entry and turns it into an Entry.
Entry interpret_entry(const std::string& name, const Json& info, const Failer& fail) {
  const std::string who = fmt::format("tensor \"{}\"", excerpt(name, 60));
  if (!info.is_object())
    fail(fmt::format("{}: the entry must be an object with \"dtype\", \"shape\" and \"data_offsets\", got {}",
                     who, describe(info)));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!info.contains(field)) fail(fmt::format("{}: the entry has no \"{}\"", who, field));

  Entry e;
  e.name = name;
  const Json& dtype = info.at("dtype");
  if (!dtype.is_string()) fail(fmt::format("{}: \"dtype\" must be a string, got {}", who, describe(dtype)));
  const std::string& code = dtype.get_ref<const std::string&>();
  if (code == "F32") e.dtype = DType::Float32;
  else if (code == "F64") e.dtype = DType::Float64;
  else if (code == "I64") e.dtype = DType::Int64;
  else fail(fmt::format("{}: unsupported dtype \"{}\" (supported: {})", who, excerpt(code, 40), kSupported));

  // Dimensions: non-negative integers whose non-zero product fits in int64, so that
  // strides never overflow.
  const Json& shape = info.at("shape");
  if (!shape.is_array()) fail(fmt::format("{}: \"shape\" must be an array of integers, got {}", who, describe(shape)));
  int64_t extent = 1;
  for (const Json& d : shape) {
    if (!d.is_number_integer())
      fail(fmt::format("{}: \"shape\" has a non-integer dimension ({})", who, describe(d)));
    if (!d.is_number_unsigned()) fail(fmt::format("{}: \"shape\" has a negative dimension {}", who, d.dump()));
    const uint64_t n = d.get<uint64_t>();
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (n > 0 && extent > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(n)))
      fail(fmt::format("{}: shape {} is too large", who, excerpt(shape.dump(), 200)));
    e.shape.push_back(static_cast<int64_t>(n));
    if (n > 0) extent *= static_cast<int64_t>(n);
  }

  const Json& offsets = info.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    fail(fmt::format("{}: \"data_offsets\" must be an array of two integers [begin, end], got {}", who,
                     describe(offsets)));
  for (const Json& o : offsets) {
    if (!o.is_number_integer())
      fail(fmt::format("{}: \"data_offsets\" must hold integers, got {}", who, describe(o)));
    if (!o.is_number_unsigned()) fail(fmt::format("{}: \"data_offsets\" has a negative offset {}", who, o.dump()));
  }
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.end < e.begin)
    fail(fmt::format("{}: data_offsets [{}, {}] end before they begin", who, e.begin, e.end));

  // numel < 2^63 and the item size is at most 8, so only the byte count can overflow.
  const uint64_t numel = static_cast<uint64_t>(shape_numel(e.shape));
  const uint64_t item = dtype_size(e.dtype);
  const bool overflow = numel > std::numeric_limits<uint64_t>::max() / item;
  if (overflow || e.end - e.begin != numel * item)
    fail(fmt::format("{}: data_offsets [{}, {}] span {} bytes, but shape {} of {} needs {} bytes", who, e.begin,
                     e.end, e.end - e.begin, shape_text(e.shape), code,
                     overflow ? fmt::format("{} x {}", numel, item) : std::to_string(numel * item)));
  return e;
}

}  // namespace

// ---- reading -----------------------------------------------------------------------------

namespace {

// The header text: reads the 8-byte little-endian header length, checks it against the
// limit and the file size, then reads that many bytes. `header_len` receives the length.
template <typename Input>
std::string read_header_text(Input& in, uint64_t file_size, uint64_t& header_len, const Failer& fail) {
  if (file_size < 8)
    fail(fmt::format("file is truncated: a safetensors file starts with an 8-byte header length, expected at "
                     "least 8 bytes, the file has {}", file_size));
  unsigned char len_buf[8];
  in.read_exact(len_buf, 8, "the header length");
  header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(len_buf[i]) << (8 * i);
  if (header_len > kMaxHeader)
    fail(fmt::format("header length {} is absurd (the limit is {} bytes; the file has {}): not a safetensors "
                     "file, or a corrupt one", header_len, kMaxHeader, file_size));
  if (header_len > file_size - 8)
    fail(fmt::format("file is truncated: the header length says {} header bytes, but only {} bytes follow it "
                     "(expected at least {} bytes, the file has {})",
                     header_len, file_size - 8, 8 + header_len, file_size));
  std::string header(header_len, '\0');
  in.read_exact(header.data(), header.size(), "the header");
  return header;
}

// The header's top-level entries in header order: "__metadata__" (null, or an object of
// string to string) goes into `metadata`, every other key is a tensor entry.
std::vector<Entry> interpret_header(const std::string& header, std::map<std::string, std::string>& metadata,
                                    const Failer& fail) {
  std::vector<std::string> keys;  // the top-level keys in header order
  const Json root = parse_header_json(header, keys, fail);
  if (!root.is_object()) fail(fmt::format("header is {}, not a JSON object (header: \"{}\")", describe(root), excerpt(header)));

  std::vector<Entry> entries;
  for (const std::string& key : keys) {
    const Json& value = root.at(key);
    if (key == kMetadataKey) {
      if (value.is_null()) continue;  // as the reference reader, which maps null to "no metadata"
      if (!value.is_object())
        fail(fmt::format("\"__metadata__\" must be an object of string to string, got {}", describe(value)));
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string())
          fail(fmt::format("\"__metadata__\" values must be strings, but \"{}\" is {}", excerpt(mkey, 60),
                           describe(mvalue)));
        metadata.emplace(mkey, mvalue.template get<std::string>());
      }
      continue;
    }
    entries.push_back(interpret_entry(key, value, fail));
    entries.back().json_index = entries.size() - 1;
  }
  return entries;
}

// Sorts the entries into data order and checks that they tile [0, data_size) exactly:
// no gap, no overlap, nothing missing at the end and nothing left over.
void check_entries_tile_data(std::vector<Entry>& entries, uint64_t file_size, uint64_t header_len,
                             const Failer& fail) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.json_index) < std::tie(b.begin, b.end, b.json_index);
  });
  const uint64_t data_size = file_size - 8 - header_len;
  uint64_t covered = 0;  // end of the tensors checked so far
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin > covered)
      fail(fmt::format("gap in the data: bytes [{}, {}) belong to no tensor ({} tensor \"{}\" [{}, {}])", covered,
                       e.begin, prev ? fmt::format("between tensor \"{}\" [{}, {}] and", excerpt(prev->name, 60),
                                                   prev->begin, prev->end)
                                     : std::string("before"),
                       excerpt(e.name, 60), e.begin, e.end));
    if (e.begin < covered)
      fail(fmt::format("tensor \"{}\" with data_offsets [{}, {}] overlaps tensor \"{}\" with data_offsets [{}, {}]",
                       excerpt(e.name, 60), e.begin, e.end, excerpt(prev->name, 60), prev->begin, prev->end));
    covered = e.end;
    prev = &e;
  }
  if (covered > data_size)
    fail(fmt::format("file is truncated: the tensors need {} bytes of data but only {} follow the header "
                     "(tensor \"{}\" has data_offsets [{}, {}]; expected a file of 8 + {} + {} = {} bytes, the "
                     "file has {})", covered, data_size, excerpt(prev->name, 60), prev->begin, prev->end, header_len,
                     covered, sum_text(8, header_len, covered), file_size));
  if (covered < data_size)
    fail(fmt::format("file has {} trailing bytes after the tensor data (the tensors cover {} bytes, the data "
                     "section has {})", data_size - covered, covered, data_size));
}

// The reader proper, over an InputFile or a MemoryInput; `path` names the source in errors.
template <typename Input>
SafetensorsFile read_safetensors_from(Input& in, const std::string& path) {
  const Failer fail{"read_safetensors", path};
  const uint64_t file_size = in.size();
  uint64_t header_len = 0;
  const std::string header = read_header_text(in, file_size, header_len, fail);

  SafetensorsFile out;
  std::vector<Entry> entries = interpret_header(header, out.metadata, fail);
  check_entries_tile_data(entries, file_size, header_len, fail);

  // Only now, with every size checked against the file, allocate and read (the entries
  // are in data order, so the reads are sequential).
  out.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    in.read_exact(t.raw_data(), static_cast<size_t>(e.end - e.begin),
                  fmt::format("the data of tensor \"{}\"", excerpt(e.name, 60)));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  InputFile in(path, "read_safetensors", "a safetensors file");
  return read_safetensors_from(in, path);
}

SafetensorsFile read_safetensors_bytes(const void* data, size_t size, const std::string& name) {
  MemoryInput in(data, size, "read_safetensors", name);
  return read_safetensors_from(in, name);
}

// ---- writing -----------------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const Failer fail{"write_safetensors", path};

  // Validate everything before creating any file.
  auto check_utf8 = [&](const std::string& s, const std::string& what) {
    try {
      (void)Json(s).dump();
    } catch (const Json::type_error&) {
      fail(fmt::format("{} is not valid UTF-8 (\"{}\")", what, excerpt(s, 60)));
    }
  };
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    check_utf8(name, "a tensor name");
    if (name == kMetadataKey) fail("\"__metadata__\" is reserved for the metadata and cannot name a tensor");
    if (!names.insert(name).second) fail(fmt::format("the tensor name \"{}\" appears twice", excerpt(name, 60)));
    if (!t.defined()) fail(fmt::format("tensor \"{}\" is undefined", excerpt(name, 60)));
  }
  for (const auto& [key, value] : metadata) {
    check_utf8(key, "a metadata key");
    check_utf8(value, fmt::format("the value of metadata key \"{}\"", excerpt(key, 60)));
  }

  // The header, in the reference writer's layout: compact, metadata first, then the
  // tensors in order, each {"dtype":..,"shape":[..],"data_offsets":[begin,end]}.
  std::string header = "{";
  if (!metadata.empty()) header += fmt::format("\"{}\":{}", kMetadataKey, Json(metadata).dump());
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    std::string dims;
    for (size_t i = 0; i < t.shape().size(); ++i) dims += (i ? "," : "") + std::to_string(t.shape()[i]);
    header += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          header.size() > 1 ? "," : "", Json(name).dump(), st_dtype_name(t.dtype()), dims, offset,
                          offset + nbytes);
    offset += nbytes;
  }
  header += "}";
  header.append((kAlign - header.size() % kAlign) % kAlign, ' ');
  std::string prefix(8, '\0');
  for (size_t i = 0; i < 8; ++i) prefix[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xff);

  write_file_atomic(path, "write_safetensors", [&](const ByteSink& write) {
    write(prefix.data(), prefix.size());
    write(header.data(), header.size());
    for (const auto& [name, t] : tensors) {
      // One tensor at a time on the host, so a device-resident model needs no second copy.
      const Tensor c = t.detach().to(Device::CPU).contiguous();
      write(c.raw_data(), static_cast<size_t>(c.numel()) * dtype_size(c.dtype()));
    }
  });
}

}  // namespace runway
