#include "apps/parse.h"

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <sstream>
#include <system_error>

namespace runway::apps {

namespace {

// The items of a comma-separated list; an empty item ("1,,2", "1,") is an error.
std::vector<std::string> split_list(const std::string& flag, const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.empty()) throw UsageError(fmt::format("{}: '{}' has an empty item; give values separated by single commas", flag, text));
    items.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

std::string with_details(const std::string& help, const std::string& details) {
  return details.empty() ? help : fmt::format("{} ({})", help, details);
}

std::string default_and_range(const std::string& default_text, const NumberRange& range, bool integer) {
  const std::string r = range.describe(integer);
  const bool any = r == "any integer" || r == "any finite number";
  if (default_text.empty()) return any ? "" : r;
  return any ? "default " + default_text : fmt::format("default {}; {}", default_text, r);
}

}  // namespace

int64_t parse_int(const std::string& flag, const std::string& text, const NumberRange& range) {
  if (text.empty()) throw UsageError(fmt::format("{}: an integer is needed, got an empty value", flag));
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range)
    throw UsageError(fmt::format("{}: '{}' is too large for a 64-bit integer", flag, text));
  if (ec != std::errc() || ptr != end) throw UsageError(fmt::format("{}: '{}' is not an integer", flag, text));
  if (!range.contains(static_cast<double>(v)))
    throw UsageError(fmt::format("{} must be {}, got {}", flag, range.describe(true), v));
  return v;
}

uint64_t parse_uint(const std::string& flag, const std::string& text) {
  if (text.empty()) throw UsageError(fmt::format("{}: an integer is needed, got an empty value", flag));
  uint64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range)
    throw UsageError(fmt::format("{}: '{}' is too large (at most 18446744073709551615)", flag, text));
  if (text[0] == '-' && ec != std::errc() && text.size() > 1 && std::isdigit(static_cast<unsigned char>(text[1])))
    throw UsageError(fmt::format("{} must be >= 0, got {}", flag, text));
  if (ec != std::errc() || ptr != end) throw UsageError(fmt::format("{}: '{}' is not an integer", flag, text));
  return v;
}

double parse_float(const std::string& flag, const std::string& text, const NumberRange& range) {
  if (text.empty()) throw UsageError(fmt::format("{}: a number is needed, got an empty value", flag));
  if (std::isspace(static_cast<unsigned char>(text[0])))
    throw UsageError(fmt::format("{}: '{}' is not a number (leading space)", flag, text));
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || end != text.c_str() + text.size())
    throw UsageError(fmt::format("{}: '{}' is not a number", flag, text));
  if (!std::isfinite(v)) throw UsageError(fmt::format("{}: '{}' is not a finite number", flag, text));
  if (!range.contains(v)) throw UsageError(fmt::format("{} must be {}, got {}", flag, range.describe(false), v));
  return v;
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, const NumberRange& range) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(flag, text)) out.push_back(parse_int(flag, item, range));
  return out;
}

std::vector<uint64_t> parse_uint_list(const std::string& flag, const std::string& text) {
  std::vector<uint64_t> out;
  for (const std::string& item : split_list(flag, text)) out.push_back(parse_uint(flag, item));
  return out;
}

std::string parse_choice(const std::string& flag, const std::string& text, const std::vector<std::string>& allowed) {
  for (const std::string& a : allowed)
    if (a == text) return text;
  std::string list;
  for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw UsageError(fmt::format("{}: '{}' is not allowed: allowed values are {}", flag, text, list));
}

CLI::Option* add_int_option(CLI::App* cmd, const std::string& flag, int64_t* dest, const std::string& help,
                            const NumberRange& range, bool show_default) {
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest, range](const std::string& text) { *dest = parse_int(flag, text, range); },
          with_details(help, default_and_range(show_default ? std::to_string(*dest) : "", range, true)))
      ->type_name("INT");
}

CLI::Option* add_uint_option(CLI::App* cmd, const std::string& flag, uint64_t* dest, const std::string& help,
                             bool show_default) {
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest](const std::string& text) { *dest = parse_uint(flag, text); },
          with_details(help, show_default ? "default " + std::to_string(*dest) : ""))
      ->type_name("UINT");
}

CLI::Option* add_float_option(CLI::App* cmd, const std::string& flag, double* dest, const std::string& help,
                              const NumberRange& range, bool show_default) {
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest, range](const std::string& text) { *dest = parse_float(flag, text, range); },
          with_details(help, default_and_range(show_default ? fmt::format("{}", *dest) : "", range, false)))
      ->type_name("FLOAT");
}

CLI::Option* add_int_list_option(CLI::App* cmd, const std::string& flag, std::vector<int64_t>* dest,
                                 const std::string& help, const NumberRange& range) {
  const std::string r = range.describe(true);
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest, range](const std::string& text) { *dest = parse_int_list(flag, text, range); },
          with_details(help, r == "any integer" ? "comma separated" : "comma separated, each " + r))
      ->type_name("INT,...");
}

CLI::Option* add_uint_list_option(CLI::App* cmd, const std::string& flag, std::vector<uint64_t>* dest,
                                  const std::string& help) {
  std::string d;
  for (uint64_t v : *dest) d += (d.empty() ? "" : ",") + std::to_string(v);
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest](const std::string& text) { *dest = parse_uint_list(flag, text); },
          with_details(help, d.empty() ? "comma separated" : "comma separated; default " + d))
      ->type_name("UINT,...");
}

CLI::Option* add_choice_option(CLI::App* cmd, const std::string& flag, std::string* dest, const std::string& help,
                               const std::vector<std::string>& allowed) {
  std::string names;
  for (const std::string& a : allowed) names += (names.empty() ? "" : ",") + a;
  return cmd
      ->add_option_function<std::string>(
          flag, [flag, dest, allowed](const std::string& text) { *dest = parse_choice(flag, text, allowed); },
          with_details(help, "default " + *dest))
      ->type_name("{" + names + "}");
}

std::string describe_parse_error(const CLI::ParseError& e, const CLI::App& app) {
  const std::string msg = e.what();
  std::smatch m;
  static const std::regex at_most(R"(^(.*): At Most (\d+) required but received (\d+)$)");
  static const std::regex at_least(R"(^(.*): At least (\d+) required but received (\d+)$)");
  static const std::regex value_missing(R"(^(.*): \d+ required \S+ missing$)");
  static const std::regex not_expected(R"(^The following arguments? (?:was|were) not expected: (.*)$)");
  static const std::regex no_convert(R"(^Could not convert: (\S+) = (.*)$)");
  if (std::regex_match(msg, m, at_most))
    return m[2] == "1" ? fmt::format("{} was given {} times; give it once", m[1].str(), m[3].str())
                       : fmt::format("{} was given {} values; give at most {}", m[1].str(), m[3].str(), m[2].str());
  if (std::regex_match(msg, m, at_least))
    return fmt::format("{} needs at least {} value(s), got {}", m[1].str(), m[2].str(), m[3].str());
  if (std::regex_match(msg, m, value_missing)) return fmt::format("{} needs a value", m[1].str());
  if (std::regex_match(msg, m, not_expected)) {
    // CLI11 lists them last first.
    std::vector<std::string> words;
    std::istringstream in(m[1].str());
    for (std::string w; in >> w;) words.insert(words.begin(), w);
    std::string listed;
    for (const std::string& w : words) listed += (listed.empty() ? "" : " ") + w;
    std::string where = "runway --help";
    for (const CLI::App* sub : app.get_subcommands())  // the ones given on this command line
      where = fmt::format("runway {} --help", sub->get_name());
    return fmt::format("unknown argument{}: {} (see `{}`)", words.size() == 1 ? "" : "s", listed, where);
  }
  if (std::regex_match(msg, m, no_convert)) return fmt::format("{}: '{}' is not a valid value", m[1].str(), m[2].str());
  if (msg == "A subcommand is required" || msg.rfind("Requires at least 1 subcommand", 0) == 0) {
    std::string names;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      names += (names.empty() ? "" : ", ") + sub->get_name();
    return fmt::format("a command is required: one of {} (see `runway --help`)", names);
  }
  return msg;
}

}  // namespace runway::apps
