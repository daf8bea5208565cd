// Strict parsing of the command line's values, shared by every subcommand: a number
// parses completely (no trailing characters, no leading space), an integer is written
// as one ("1e3" and "2.0" are not integers), a float is finite, and every value is in
// its range. A bad value is a UsageError naming the flag, which main() reports as
// "runway: error: --flag: ..." with exit code 2 (runtime errors exit 1).
//
// The add_*_option helpers register a flag that parses through these functions and
// shows its type, default and range in --help.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "nn/config.h"

namespace runway::apps {

// A mistake in how the command was called (exit code 2), as opposed to a failure while
// running it (runway::Error, exit code 1).
class UsageError : public Error {
 public:
  using Error::Error;
};

using nn::NumberRange;

// "--steps: '1e3' is not an integer", "--steps must be in [1, ...], got 0", ...
int64_t parse_int(const std::string& flag, const std::string& text, const NumberRange& range = {});
uint64_t parse_uint(const std::string& flag, const std::string& text);
double parse_float(const std::string& flag, const std::string& text, const NumberRange& range = {});
// Comma separated integers, each parsed by parse_int; empty items are refused.
std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, const NumberRange& range = {});
std::vector<uint64_t> parse_uint_list(const std::string& flag, const std::string& text);
// One of `allowed`, else "--kind: 'sparse' is not allowed: allowed values are standard, rewired".
std::string parse_choice(const std::string& flag, const std::string& text, const std::vector<std::string>& allowed);

// Flags that store into *dest through the parsers above. `help` gets " (default X; R)"
// appended, with X the value *dest holds now (unless show_default is false) and R the
// range; the type shows as INT, UINT, FLOAT, INT,... or {a,b,c}.
CLI::Option* add_int_option(CLI::App* cmd, const std::string& flag, int64_t* dest, const std::string& help,
                            const NumberRange& range = {}, bool show_default = true);
CLI::Option* add_uint_option(CLI::App* cmd, const std::string& flag, uint64_t* dest, const std::string& help,
                             bool show_default = true);
CLI::Option* add_float_option(CLI::App* cmd, const std::string& flag, double* dest, const std::string& help,
                              const NumberRange& range = {}, bool show_default = true);
CLI::Option* add_int_list_option(CLI::App* cmd, const std::string& flag, std::vector<int64_t>* dest,
                                 const std::string& help, const NumberRange& range = {});
CLI::Option* add_uint_list_option(CLI::App* cmd, const std::string& flag, std::vector<uint64_t>* dest,
                                  const std::string& help);
CLI::Option* add_choice_option(CLI::App* cmd, const std::string& flag, std::string* dest, const std::string& help,
                               const std::vector<std::string>& allowed);

// CLI11's parse errors as one plain sentence naming the flag ("--steps was given 2
// times; give it once" instead of "--steps: At Most 1 required but received 2").
std::string describe_parse_error(const CLI::ParseError& e, const CLI::App& app);

}  // namespace runway::apps
