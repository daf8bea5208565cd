// The statistics of a multi-seed comparison: the paired difference of a configuration
// to the baseline over the seeds both ran (same seed = same initialisation and data
// order), with a two-sided 95% Student t interval. A difference whose interval excludes
// 0 is larger than the seed-to-seed noise of this study; one whose interval contains 0
// is not shown to be.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

namespace runway::viz {

// The 0.975 quantile of Student's t with df degrees of freedom (df >= 1): a table for
// df <= 30 (4 significant digits), the Cornish-Fisher expansion in 1/df beyond (error
// below 1e-4 from df = 31 on). Throws for df < 1.
double t_quantile_975(int64_t df);

struct PairedDifference {
  int64_t n = 0;        // seeds present, and finite, in both
  double mean = 0;      // mean over those seeds of (other - base)
  double sd = 0;        // sample standard deviation of the differences (NaN when n < 2)
  double low = 0, high = 0;  // mean -/+ t(n-1) sd / sqrt(n); NaN when n < 2
  bool excludes_zero() const { return n >= 2 && (low > 0 || high < 0); }
};

// other - base, paired by seed; seeds missing from either, or non-finite in either, are
// left out. n = 0 gives mean NaN.
PairedDifference paired_difference(const std::map<uint64_t, double>& base, const std::map<uint64_t, double>& other);

}  // namespace runway::viz
