#include "viz/stats.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "engine/tensor.h"  // Error

namespace runway::viz {

double t_quantile_975(int64_t df) {
  // Student t, two-sided 95% (0.975 quantile), df = 1..30.
  static const double table[30] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                   2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                   2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) throw Error(fmt::format("t_quantile_975: degrees of freedom must be >= 1, got {}", df));
  if (df <= 30) return table[df - 1];
  // Cornish-Fisher: t = z + g1/v + g2/v^2 + g3/v^3, z the normal quantile.
  const double z = 1.959963984540054, v = static_cast<double>(df);
  const double z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z;
  const double g1 = (z3 + z) / 4, g2 = (5 * z5 + 16 * z3 + 3 * z) / 96,
               g3 = (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / 384;
  return z + g1 / v + g2 / (v * v) + g3 / (v * v * v);
}

PairedDifference paired_difference(const std::map<uint64_t, double>& base, const std::map<uint64_t, double>& other) {
  std::vector<double> d;
  for (const auto& [seed, b] : base) {
    const auto it = other.find(seed);
    if (it != other.end() && std::isfinite(b) && std::isfinite(it->second)) d.push_back(it->second - b);
  }
  PairedDifference p;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  p.n = static_cast<int64_t>(d.size());
  if (p.n == 0) {
    p.mean = p.sd = p.low = p.high = nan;
    return p;
  }
  double sum = 0;
  for (double x : d) sum += x;
  p.mean = sum / static_cast<double>(p.n);
  if (p.n < 2) {
    p.sd = p.low = p.high = nan;
    return p;
  }
  double ss = 0;
  for (double x : d) ss += (x - p.mean) * (x - p.mean);
  p.sd = std::sqrt(ss / static_cast<double>(p.n - 1));
  const double half = t_quantile_975(p.n - 1) * p.sd / std::sqrt(static_cast<double>(p.n));
  p.low = p.mean - half;
  p.high = p.mean + half;
  return p;
}

}  // namespace runway::viz
