// Reproducible random numbers.
//
// Generator is xoshiro256** (Blackman & Vigna) seeded through SplitMix64 from a
// 64-bit seed, so a seed fully determines every draw on every platform:
//   uniform01()  = (next() >> 11) * 2^-53            in [0, 1)
//   normal()     = Box-Muller on two uniforms: sqrt(-2 ln(1-u1)) * cos(2 pi u2),
//                  the paired sine value is kept and returned by the next call.
// Tensors are filled in row-major order in double precision, then cast to their
// dtype. All randomness in runway (init, dropout masks, data windows) takes an
// explicit Generator; there is no hidden global state.
#pragma once

#include <cstdint>

namespace runway {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }
  void manual_seed(uint64_t seed);
  uint64_t next();
  double uniform01();
  double uniform(double low, double high) { return low + (high - low) * uniform01(); }
  double normal();
  // An integer in [0, n), unbiased (rejection sampling).
  uint64_t below(uint64_t n);

  // The full state, so a checkpoint can save and restore it exactly.
  struct State {
    uint64_t s[4];
    bool has_spare;
    double spare;
  };
  State state() const { return {{s_[0], s_[1], s_[2], s_[3]}, has_spare_, spare_}; }
  void set_state(const State& st);

 private:
  uint64_t s_[4] = {0, 0, 0, 0};
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace runway
