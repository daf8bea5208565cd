// The training configuration as data: one table of fields (key, type, allowed values or
// range, one-line help, where the value lives in TrainConfig) drives
//   * TrainConfig::to_json / update_from_json / validate (the JSON of --config files and
//     of a checkpoint's config.json: keys and format as before),
//   * the flags of `runway train` (apps/train_cmd.cpp: --n-layer for n_layer, with the
//     type, default, range and help shown by --help),
//   * the option table of docs/usage.md (config_fields_markdown(); a test checks that
//     the file holds exactly this text).
// The defaults are the member initialisers of TrainConfig and GPTConfig (one place):
// the table reads them from a default-constructed config.
//
// Values are strict: integer fields take JSON integers only (2.0 and 2.5 are refused
// alike: a count written as a float is a mistake to point out, not to round), float
// fields take finite numbers, enums one of their names, and every number its range.
// Cross-field rules (n_head divides n_embd, runway_head < n_head, ...) and the memory
// estimate are checked by validate().
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/train.h"

namespace runway::nn {

// An interval of allowed numbers; the default allows every finite number.
struct NumberRange {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false;  // min itself excluded
  bool max_open = false;  // max itself excluded

  static NumberRange closed(double lo, double hi) { return {lo, hi, false, false}; }
  static NumberRange at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
  static NumberRange above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false}; }
  static NumberRange open(double lo, double hi) { return {lo, hi, true, true}; }
  static NumberRange closed_open(double lo, double hi) { return {lo, hi, false, true}; }

  bool contains(double v) const;
  // "in [1, 1024]", ">= 0", "> 0", "in (0, 1)", "any finite number"; integer bounds print
  // without a decimal point when `integer`.
  std::string describe(bool integer) const;
};

enum class FieldType { Int, UInt, Float, Bool, String, IntList, Enum };
const char* field_type_name(FieldType t);  // "int", "uint", "float", "bool", "string", "int list", "enum"

struct ConfigField {
  std::string key;   // JSON key; the flag is "--" + key with '_' as '-'
  FieldType type;
  std::string help;  // one line
  std::vector<std::string> allowed;  // Enum: the names
  NumberRange range;  // Int, UInt, Float, and each element of IntList
  // The value in the config as JSON, and setting it from a JSON value that
  // check_field_value() accepted.
  std::function<nlohmann::json(const TrainConfig&)> get;
  std::function<void(TrainConfig&, const nlohmann::json&)> set;
  // Written to config.json only when it differs from the default: a field added later
  // (attention_impl) leaves the config.json of a default run as it was before.
  bool omitted_when_default = false;

  std::string flag() const;                 // "--n-layer"
  nlohmann::json default_value() const;     // from TrainConfig{}
  std::string default_text() const;         // "2", "0.003", "rope", "false", "all" (empty list), "" for ""
  std::string allowed_text() const;         // "rope, none, learned, alibi", "in [1, 1024]", "true or false", "any text"
};

// Every field of TrainConfig, in the order of config.json.
const std::vector<ConfigField>& train_config_fields();
// The field with this key, or nullptr.
const ConfigField* find_config_field(const std::string& key);

// Checks that `value` is a valid JSON value for the field (type, integer-ness,
// finiteness, enum name, range). Throws Error reading "<name> ..." with `name` what the
// user wrote (the key, or the flag), e.g. "n_layer must be in [1, 1024], got 5000" or
// "lr has the wrong type: expected a finite number, got \"fast\"".
void check_field_value(const ConfigField& field, const nlohmann::json& value, const std::string& name);

// The option table of docs/usage.md (markdown, one row per field, ending in a newline).
std::string config_fields_markdown();

// ---- memory -----------------------------------------------------------------------------

// The physical memory of this machine in bytes (0 when unknown: nothing is refused then).
uint64_t physical_memory_bytes();

// Lower estimates of the memory a model needs: parameters only (float32), and
// training one step (parameters, gradients, AdamW moments, the activations the backward
// keeps: about 20 floats per position and width per layer, the attention maps, logits).
uint64_t model_parameter_count(const GPTConfig& m);
uint64_t training_memory_bytes(const TrainConfig& c);
// A no-grad forward of `batch` rows of length T (what eval and inspect run): parameters,
// one layer's activations and attention maps at a time, logits.
uint64_t inference_memory_bytes(const GPTConfig& m, int64_t batch, int64_t T);
// Decoding `length` tokens one by one with the KV cache (and, for two_hop rewired
// layers, the stored runway rows).
uint64_t decoding_memory_bytes(const GPTConfig& m, int64_t length);

// Throws Error when `bytes` exceed the physical memory: "<what> needs at least X GiB,
// more than this machine's Y GiB of memory; <advice>".
void check_fits_in_memory(uint64_t bytes, const std::string& what, const std::string& advice);

// "1.5 GiB", "12.0 MiB", "900 B".
std::string format_bytes(uint64_t bytes);

// Reads a JSON file, refusing what is not a regular file (a FIFO, a device: never
// blocks on one) and naming the file in every error.
nlohmann::json load_json_file(const std::string& path);

}  // namespace runway::nn
