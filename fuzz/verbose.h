// RUNWAY_FUZZ_VERBOSE=1 makes a harness say what became of each input (accepted, or the
// error), to check that the seeds reach what they are meant to, or to read a finding.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace runway::fuzz {

inline bool verbose() {
  static const bool on = std::getenv("RUNWAY_FUZZ_VERBOSE") != nullptr;
  return on;
}

inline void report(const char* outcome) {
  if (verbose()) std::fprintf(stderr, "  -> %s\n", outcome);
}

}  // namespace runway::fuzz
