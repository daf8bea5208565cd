// `runway attention` end to end: runs the built CLI on small random .npy inputs and
// checks every file it writes against an independent naive float64 reference written
// here in plain loops (no engine ops), with the gradients checked by central finite
// differences of that reference. Also checks that bad invocations fail loudly.
#include <catch2/catch.hpp>

#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/test_support.h"
#include "engine/npy.h"

#ifndef RUNWAY_CLI_PATH
#error "RUNWAY_CLI_PATH must name the built runway binary (tests/CMakeLists.txt sets it)"
#endif

using namespace runway;
using runway::testing::slurp;
using runway::testing::TempDir;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {



struct CliResult {
  int status = -1;  // exit status, or -1 when the process did not exit normally
  std::string out, err;
};

// Runs `runway attention <args>` with stdout and stderr captured into files in `dir`.
CliResult run_attention_cli(const TempDir& dir, const std::string& args) {
  const std::string cmd = fmt::format("'{}' attention {} >'{}' 2>'{}'", RUNWAY_CLI_PATH, args,
                                      dir / "stdout.txt", dir / "stderr.txt");
  const int raw = std::system(cmd.c_str());
  CliResult r;
  r.status = (raw != -1 && WIFEXITED(raw)) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(dir / "stdout.txt");
  r.err = slurp(dir / "stderr.txt");
  return r;
}

// ---- the naive reference ---------------------------------------------------------------

struct Dims {
  int64_t B, H, T, D;
  int64_t numel() const { return B * H * T * D; }
  // (b, h, t, d) in a row-major (B, H, T, D) array.
  int64_t at(int64_t b, int64_t h, int64_t t, int64_t d) const { return ((b * H + h) * T + t) * D + d; }
};

struct RewireConfig {
  bool rewired = false;
  bool two_hop = false;  // else absorption
  double beta = 1.0;
  int64_t head = 0;
  const std::vector<double>* fixed_r = nullptr;  // use this R (B, T, T) instead: --detach
};

struct Reference {
  std::vector<double> y;      // (B, H, T, D)
  std::vector<double> a;      // (B, H, T, T) softmax(S_h)
  std::vector<double> a_rew;  // (B, H, T, T) softmax(S_h - beta R); equals a when standard
  std::vector<double> p, r;   // (B, T, T)
};

// Causal softmax of one row: entries j <= i of `logits`, zero beyond.
void causal_softmax_row(const double* logits, int64_t i, int64_t T, double* out) {
  double mx = -INFINITY;
  for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, logits[j]);
  double sum = 0;
  for (int64_t j = 0; j <= i; ++j) sum += std::exp(logits[j] - mx);
  for (int64_t j = 0; j < T; ++j) out[j] = j <= i ? std::exp(logits[j] - mx) / sum : 0.0;
}

Reference naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                          const std::vector<double>& v, const Dims& n, const RewireConfig& cfg) {
  const int64_t B = n.B, H = n.H, T = n.T, D = n.D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Reference ref;
  std::vector<double> s(B * H * T * T, 0.0);  // causal logits S_h (entries j > i unused)
  ref.a.assign(B * H * T * T, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        double* row = &s[((b * H + h) * T + i) * T];
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[n.at(b, h, i, d)] * k[n.at(b, h, j, d)];
          row[j] = dot * scale;
        }
        causal_softmax_row(row, i, T, &ref.a[((b * H + h) * T + i) * T]);
      }

  ref.p.assign(B * T * T, 0.0);
  ref.r.assign(B * T * T, 0.0);
  ref.a_rew = ref.a;
  if (cfg.rewired) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) ref.p[(b * T + i) * T + j] = ref.a[((b * H + cfg.head) * T + i) * T + j];
    auto P = [&](int64_t b, int64_t i, int64_t j) { return ref.p[(b * T + i) * T + j]; };
    // R[i,j] = sum over the strict runway j < m < i.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < i; ++j) {
          double acc = 0;
          for (int64_t m = j + 1; m < i; ++m) acc += cfg.two_hop ? P(b, i, m) * P(b, m, j) : P(b, m, j);
          ref.r[(b * T + i) * T + j] = acc;
        }
    const std::vector<double>& r = cfg.fixed_r ? *cfg.fixed_r : ref.r;
    std::vector<double> rewired_row(T);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < T; ++i) {
          for (int64_t j = 0; j <= i; ++j)
            rewired_row[j] = s[((b * H + h) * T + i) * T + j] - cfg.beta * r[(b * T + i) * T + j];
          causal_softmax_row(rewired_row.data(), i, T, &ref.a_rew[((b * H + h) * T + i) * T]);
        }
  }

  ref.y.assign(n.numel(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += ref.a_rew[((b * H + h) * T + i) * T + j] * v[n.at(b, h, j, d)];
          ref.y[n.at(b, h, i, d)] = acc;
        }
  return ref;
}

// Gradients of L = sum(y * dy) with respect to q, k and v by central differences of
// the naive forward.
struct Grads {
  std::vector<double> dq, dk, dv;
};

Grads finite_difference_grads(std::vector<double> q, std::vector<double> k, std::vector<double> v,
                              const std::vector<double>& dy, const Dims& n, const RewireConfig& cfg) {
  const double eps = 1e-5;
  auto loss = [&] {
    const Reference ref = naive_attention(q, k, v, n, cfg);
    double l = 0;
    for (size_t i = 0; i < dy.size(); ++i) l += ref.y[i] * dy[i];
    return l;
  };
  auto grad_of = [&](std::vector<double>& x) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double orig = x[i];
      x[i] = orig + eps;
      const double up = loss();
      x[i] = orig - eps;
      const double down = loss();
      x[i] = orig;
      g[i] = (up - down) / (2 * eps);
    }
    return g;
  };
  Grads g;
  g.dq = grad_of(q);
  g.dk = grad_of(k);
  g.dv = grad_of(v);
  return g;
}

std::vector<double> random_values(int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> out(count);
  for (double& x : out) x = normal(rng);
  return out;
}

// Checks the .npy file `path` has `shape` and `dtype` and values within `tol` of `want`.
void check_file(const std::string& path, const Shape& shape, DType dtype, const std::vector<double>& want,
                double tol) {
  INFO(path);
  Tensor t = read_npy(path);
  CHECK(t.dtype() == dtype);
  REQUIRE(t.shape() == shape);
  const std::vector<double> got = t.to_vector();
  REQUIRE(got.size() == want.size());
  double worst = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    if (!(err <= worst)) worst = err, worst_at = i;  // also catches NaN
  }
  INFO("worst element " << worst_at << ": got " << got[worst_at] << ", want " << want[worst_at]);
  CHECK(worst <= tol);
}

// dV_h = A'_h^T dY_h, directly from the naive A'.
std::vector<double> naive_dv(const std::vector<double>& a_rew, const std::vector<double>& dy, const Dims& n) {
  std::vector<double> dv(n.numel(), 0.0);
  for (int64_t b = 0; b < n.B; ++b)
    for (int64_t h = 0; h < n.H; ++h)
      for (int64_t j = 0; j < n.T; ++j)
        for (int64_t d = 0; d < n.D; ++d) {
          double acc = 0;
          for (int64_t i = 0; i < n.T; ++i) acc += a_rew[((b * n.H + h) * n.T + i) * n.T + j] * dy[n.at(b, h, i, d)];
          dv[n.at(b, h, j, d)] = acc;
        }
  return dv;
}

// Inputs written to `dir` as q.npy, k.npy, v.npy, dy.npy (float64).
struct Problem {
  Dims n;
  std::vector<double> q, k, v, dy;
  Problem(const TempDir& dir, Dims dims, uint64_t seed) : n(dims) {
    q = random_values(n.numel(), seed);
    k = random_values(n.numel(), seed + 1);
    v = random_values(n.numel(), seed + 2);
    dy = random_values(n.numel(), seed + 3);
    const Shape shape{n.B, n.H, n.T, n.D};
    write_npy(dir / "q.npy", Tensor::from_vector(q, shape, DType::Float64));
    write_npy(dir / "k.npy", Tensor::from_vector(k, shape, DType::Float64));
    write_npy(dir / "v.npy", Tensor::from_vector(v, shape, DType::Float64));
    write_npy(dir / "dy.npy", Tensor::from_vector(dy, shape, DType::Float64));
  }
  Shape shape() const { return {n.B, n.H, n.T, n.D}; }
  Shape bhtt() const { return {n.B, n.H, n.T, n.T}; }
  Shape btt() const { return {n.B, n.T, n.T}; }
};

std::string input_flags(const TempDir& dir) {
  return fmt::format("--q '{}' --k '{}' --v '{}' --dy '{}'", dir / "q.npy", dir / "k.npy", dir / "v.npy",
                     dir / "dy.npy");
}

}  // namespace

TEST_CASE("runway attention --kind standard matches the naive reference") {
  TempDir dir;
  Problem pb(dir, {2, 3, 5, 4}, 11);
  const std::string out = dir / "nested/out";  // parents are created
  const CliResult r = run_attention_cli(dir, input_flags(dir) + fmt::format(" --out '{}'", out));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.out, Contains("y.npy") && Contains("dv.npy"));
  CHECK(!fs::exists(out + "/p.npy"));  // intermediates only for rewired

  RewireConfig cfg;  // standard
  const Reference ref = naive_attention(pb.q, pb.k, pb.v, pb.n, cfg);
  const Grads fd = finite_difference_grads(pb.q, pb.k, pb.v, pb.dy, pb.n, cfg);
  check_file(out + "/y.npy", pb.shape(), DType::Float64, ref.y, 1e-12);
  check_file(out + "/dv.npy", pb.shape(), DType::Float64, naive_dv(ref.a, pb.dy, pb.n), 1e-12);
  check_file(out + "/dv.npy", pb.shape(), DType::Float64, fd.dv, 1e-7);
  check_file(out + "/dq.npy", pb.shape(), DType::Float64, fd.dq, 1e-7);
  check_file(out + "/dk.npy", pb.shape(), DType::Float64, fd.dk, 1e-7);
}

TEST_CASE("runway attention --kind rewired (absorption) matches the naive reference") {
  TempDir dir;
  Problem pb(dir, {2, 3, 6, 4}, 21);
  const std::string out = dir / "out";
  const CliResult r = run_attention_cli(
      dir, input_flags(dir) + fmt::format(" --out '{}' --kind rewired --beta 0.7 --runway-head 1", out));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);

  RewireConfig cfg;
  cfg.rewired = true;
  cfg.beta = 0.7;
  cfg.head = 1;
  const Reference ref = naive_attention(pb.q, pb.k, pb.v, pb.n, cfg);
  // The rewiring must actually change something, or this test checks nothing new.
  double max_r = 0;
  for (double x : ref.r) max_r = std::max(max_r, x);
  REQUIRE(max_r > 0.1);

  check_file(out + "/y.npy", pb.shape(), DType::Float64, ref.y, 1e-12);
  check_file(out + "/p.npy", pb.btt(), DType::Float64, ref.p, 1e-12);
  check_file(out + "/r.npy", pb.btt(), DType::Float64, ref.r, 1e-12);
  check_file(out + "/a.npy", pb.bhtt(), DType::Float64, ref.a, 1e-12);
  check_file(out + "/a_rewired.npy", pb.bhtt(), DType::Float64, ref.a_rew, 1e-12);
  check_file(out + "/dv.npy", pb.shape(), DType::Float64, naive_dv(ref.a_rew, pb.dy, pb.n), 1e-12);
  // dq and dk include the path through R into the runway head.
  const Grads fd = finite_difference_grads(pb.q, pb.k, pb.v, pb.dy, pb.n, cfg);
  check_file(out + "/dq.npy", pb.shape(), DType::Float64, fd.dq, 1e-7);
  check_file(out + "/dk.npy", pb.shape(), DType::Float64, fd.dk, 1e-7);
  check_file(out + "/dv.npy", pb.shape(), DType::Float64, fd.dv, 1e-7);
}

TEST_CASE("runway attention two_hop with --detach and negative beta matches the naive reference") {
  TempDir dir;
  Problem pb(dir, {1, 3, 6, 2}, 31);
  const std::string out = dir / "out";
  const CliResult r = run_attention_cli(
      dir, input_flags(dir) +
               fmt::format(" --out '{}' --kind rewired --summary two_hop --beta -1.5 --runway-head 2 --detach", out));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);

  RewireConfig cfg;
  cfg.rewired = true;
  cfg.two_hop = true;
  cfg.beta = -1.5;
  cfg.head = 2;
  const Reference ref = naive_attention(pb.q, pb.k, pb.v, pb.n, cfg);
  check_file(out + "/y.npy", pb.shape(), DType::Float64, ref.y, 1e-12);
  check_file(out + "/p.npy", pb.btt(), DType::Float64, ref.p, 1e-12);
  check_file(out + "/r.npy", pb.btt(), DType::Float64, ref.r, 1e-12);
  check_file(out + "/a_rewired.npy", pb.bhtt(), DType::Float64, ref.a_rew, 1e-12);
  // --detach: R is a constant, so differentiate the reference with R frozen.
  RewireConfig frozen = cfg;
  frozen.fixed_r = &ref.r;
  const Grads fd = finite_difference_grads(pb.q, pb.k, pb.v, pb.dy, pb.n, frozen);
  check_file(out + "/dq.npy", pb.shape(), DType::Float64, fd.dq, 1e-7);
  check_file(out + "/dk.npy", pb.shape(), DType::Float64, fd.dk, 1e-7);
  check_file(out + "/dv.npy", pb.shape(), DType::Float64, fd.dv, 1e-7);
}

TEST_CASE("runway attention --dtype float32 computes and writes float32") {
  TempDir dir;
  Problem pb(dir, {1, 2, 4, 3}, 41);
  const std::string out = dir / "out";
  const CliResult r = run_attention_cli(dir, input_flags(dir) + fmt::format(" --out '{}' --kind rewired --dtype float32", out));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  RewireConfig cfg;
  cfg.rewired = true;
  const Reference ref = naive_attention(pb.q, pb.k, pb.v, pb.n, cfg);
  check_file(out + "/y.npy", pb.shape(), DType::Float32, ref.y, 1e-5);
  check_file(out + "/r.npy", pb.btt(), DType::Float32, ref.r, 1e-5);
  check_file(out + "/dv.npy", pb.shape(), DType::Float32, naive_dv(ref.a_rew, pb.dy, pb.n), 1e-5);
}

TEST_CASE("runway attention rejects bad invocations with a nonzero exit status") {
  TempDir dir;
  Problem pb(dir, {1, 2, 4, 3}, 51);
  const std::string out = dir / "out";
  const std::string good = input_flags(dir) + fmt::format(" --out '{}'", out);

  SECTION("mismatched shapes name every file and its shape") {
    write_npy(dir / "k_bad.npy", Tensor::zeros({1, 2, 5, 3}, DType::Float64));
    const CliResult r = run_attention_cli(
        dir, fmt::format("--q '{}' --k '{}' --v '{}' --dy '{}' --out '{}'", dir / "q.npy", dir / "k_bad.npy",
                         dir / "v.npy", dir / "dy.npy", out));
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains("runway: error:") && Contains("same shape") &&
                          Contains(dir / "k_bad.npy") && Contains("(1, 2, 5, 3)") && Contains(dir / "q.npy") &&
                          Contains("(1, 2, 4, 3)"));
  }
  SECTION("inputs that are not 4-D") {
    write_npy(dir / "q3.npy", Tensor::zeros({2, 4, 3}, DType::Float64));
    const CliResult r = run_attention_cli(
        dir, fmt::format("--q '{}' --k '{}' --v '{}' --dy '{}' --out '{}'", dir / "q3.npy", dir / "k.npy",
                         dir / "v.npy", dir / "dy.npy", out));
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains(dir / "q3.npy") && Contains("(2, 4, 3)") && Contains("4-D"));
  }
  SECTION("a missing input file") {
    const CliResult r = run_attention_cli(
        dir, fmt::format("--q '{}' --k '{}' --v '{}' --dy '{}' --out '{}'", dir / "q.npy", dir / "k.npy",
                         dir / "v.npy", dir / "nope.npy", out));
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains("runway: error:") && Contains(dir / "nope.npy") && Contains("cannot open"));
  }
  SECTION("a malformed input file") {
    std::ofstream(dir / "v.npy", std::ios::binary) << "definitely not numpy";
    const CliResult r = run_attention_cli(dir, good);
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains(dir / "v.npy") && Contains("bad magic string"));
  }
  SECTION("--runway-head out of range names the flag, the value and H") {
    for (const char* head : {"2", "-1"}) {
      const CliResult r = run_attention_cli(dir, good + fmt::format(" --kind rewired --runway-head {}", head));
      CHECK(r.status != 0);
      CHECK_THAT(r.err, Contains(fmt::format("--runway-head {} is out of range", head)) && Contains("H = 2"));
    }
  }
  SECTION("unknown --summary, --kind and --dtype values") {
    CHECK(run_attention_cli(dir, good + " --kind rewired --summary two-hop").status != 0);
    CHECK(run_attention_cli(dir, good + " --kind rewired --summary").status != 0);
    CHECK(run_attention_cli(dir, good + " --kind sparse").status != 0);
    CHECK(run_attention_cli(dir, good + " --dtype float16").status != 0);
    CHECK(run_attention_cli(dir, good + " --beta lots").status != 0);
  }
  SECTION("a required flag missing") {
    const CliResult r = run_attention_cli(dir, fmt::format("--q '{}' --k '{}' --v '{}' --out '{}'", dir / "q.npy",
                                                           dir / "k.npy", dir / "v.npy", out));
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains("--dy"));
  }
  SECTION("--out is an existing file") {
    std::ofstream(dir / "file") << "x";
    const CliResult r = run_attention_cli(dir, input_flags(dir) + fmt::format(" --out '{}'", dir / "file"));
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Contains(dir / "file"));
  }
  // Nothing was written by any failing run.
  CHECK(!fs::exists(out));
}

TEST_CASE("runway attention warns about rewired-only flags on a standard run") {
  TempDir dir;
  Problem pb(dir, {1, 1, 3, 2}, 61);
  const CliResult r = run_attention_cli(dir, input_flags(dir) + fmt::format(" --out '{}' --beta 2", dir / "out"));
  CHECK(r.status == 0);
  CHECK_THAT(r.err, Contains("warning") && Contains("--beta"));
  CHECK(fs::exists(dir / "out/y.npy"));
}
