// The CUDA blockwise attention kernels (cuda/ops/attention_blockwise.cu) against the
// materialised CUDA kernels and the CPU blockwise kernels, at lengths the op table's
// small samples do not reach (several tiles, a partial last tile, T up to 4096), and the
// memory they take at T = 8192.
//
// For each case (B = 1, H = 4, D = 32; standard and absorption, with ALiBi, beta 1.3 and
// -0.8, detached; T = 1, 65, 1000, 4096) the same float32 inputs (q, k, v, dy uniform in
// [-1, 1]) go through
//   * CUDA blockwise, float32: y, lse, runway_lse, then dq, dk, dv;
//   * CUDA materialised (attention_forward/backward), float32: y, dq, dk, dv;
//   * CPU blockwise in float64 on the same (float32-valued) inputs: the reference, whose
//     own float64 error is negligible, so each comparison measures the float32 side's error.
// Every compared tensor x must satisfy max|x - ref| <= 1e-5 * max(max|ref|, 0.01) (relative
// max-abs error; the floor only matters for T = 1, whose dq and dk are 0 in exact
// arithmetic and rounding noise in every implementation: the gradients of the other cases
// reach 0.2 to 0.6). lse and runway_lse, the saved state the backward reads, are compared
// the same way.
// float64 cases (T = 65, 1000) compare CUDA blockwise with the CPU at 1e-10.
//
// Memory: at T = 8192 (float32, standard and absorption) a forward + backward must take
// less than 64 MiB of device memory beyond its inputs and outputs. The caching allocator
// exposes live_bytes() and cached_bytes() (not a peak); after empty_cache(), every block a
// call allocates is either still live or back in the cache when it returns, so the growth
// of live + cached over the call bounds its peak scratch from above. (The materialised
// kernels would take 4 x 8192^2 x 4 bytes = 1 GiB for the attention map alone.)
//
// One line per check, then "N passed, M failed"; exit 77 (ctest: skipped) without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "engine/backend.h"
#include "engine/dtype.h"
#include "engine/ops/attention.h"  // alibi_slopes
#include "tests/cuda/skip_without_gpu.h"

namespace {

using runway::AttentionArgs;
using runway::Backend;
using runway::DType;
using Values = std::vector<double>;

// ---- device buffers -------------------------------------------------------------------

// Buffers on one backend, freed when the set ends.
class Buffers {
 public:
  Buffers(Backend& backend, DType dt) : be_(backend), dt_(dt) {}
  ~Buffers() {
    for (void* p : owned_) be_.deallocate(p);
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  // n elements of the buffers' dtype, or of `dt` (runway_acc is float64 in either).
  void* alloc(int64_t n) { return alloc(n, dt_); }
  void* alloc(int64_t n, DType dt) {
    void* p = be_.allocate(static_cast<size_t>(std::max<int64_t>(n, 1)) * runway::dtype_size(dt));
    owned_.push_back(p);
    return p;
  }
  void* upload(const Values& v) {
    void* p = alloc(static_cast<int64_t>(v.size()));
    if (dt_ == DType::Float32) {
      const std::vector<float> f(v.begin(), v.end());
      be_.copy_from_host(p, f.data(), f.size() * sizeof(float));
    } else {
      be_.copy_from_host(p, v.data(), v.size() * sizeof(double));
    }
    return p;
  }
  Values download(const void* p, int64_t n) {
    if (dt_ == DType::Float32) {
      std::vector<float> f(static_cast<size_t>(n));
      be_.copy_to_host(f.data(), p, f.size() * sizeof(float));
      return Values(f.begin(), f.end());
    }
    Values d(static_cast<size_t>(n));
    be_.copy_to_host(d.data(), p, d.size() * sizeof(double));
    return d;
  }

 private:
  Backend& be_;
  DType dt_;
  std::vector<void*> owned_;
};

// ---- cases --------------------------------------------------------------------------

struct Case {
  std::string what;
  bool alibi, rewired, detach;
  int64_t runway_head;
  double beta;
};

constexpr int64_t kBatch = 1, kHeads = 4, kDim = 32;

AttentionArgs make_args(const Case& c, int64_t seq) {
  AttentionArgs a;
  a.batch = kBatch;
  a.heads = kHeads;
  a.seq = seq;
  a.head_dim = kDim;
  a.scale = 1.0 / std::sqrt(static_cast<double>(kDim));
  if (c.alibi) a.alibi_slopes = runway::alibi_slopes(kHeads);
  a.rewired = c.rewired;
  a.runway_head = c.runway_head;
  a.beta = c.beta;
  a.detach = c.detach;
  return a;
}

// Inputs q, k, v, dy: uniform in [-1, 1], rounded to float32 so that every side sees the same values.
struct Inputs {
  Values q, k, v, dy;
};

Inputs make_inputs(int64_t seq, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const int64_t n = kBatch * kHeads * seq * kDim;
  auto draw = [&] {
    Values x(static_cast<size_t>(n));
    for (double& e : x) e = static_cast<double>(static_cast<float>(dist(gen)));
    return x;
  };
  Inputs in;
  in.q = draw();
  in.k = draw();
  in.v = draw();
  in.dy = draw();
  return in;
}

// What a run produces: y, lse, runway_lse (blockwise only; empty otherwise), dq, dk, dv.
struct Result {
  Values y, lse, runway_lse, dq, dk, dv;
};

Result run_blockwise(Backend& be, DType dt, const AttentionArgs& a, const Inputs& in) {
  Buffers b(be, dt);
  const int64_t n = a.batch * a.heads * a.seq * a.head_dim, rows = a.batch * a.heads * a.seq;
  const void *q = b.upload(in.q), *k = b.upload(in.k), *v = b.upload(in.v), *dy = b.upload(in.dy);
  void *y = b.alloc(n), *lse = b.alloc(rows), *runway_lse = a.rewired ? b.alloc(a.batch * a.seq) : nullptr;
  void* runway_acc = a.rewired ? b.alloc(a.batch * a.seq, DType::Float64) : nullptr;
  void *dq = b.alloc(n), *dk = b.alloc(n), *dv = b.alloc(n);
  be.attention_blockwise_forward(dt, a, q, k, v, y, lse, runway_lse, runway_acc);
  be.attention_blockwise_backward(dt, a, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv);
  Result r;
  r.y = b.download(y, n);
  r.lse = b.download(lse, rows);
  if (a.rewired) r.runway_lse = b.download(runway_lse, a.batch * a.seq);
  r.dq = b.download(dq, n);
  r.dk = b.download(dk, n);
  r.dv = b.download(dv, n);
  return r;
}

Result run_materialized(Backend& be, DType dt, const AttentionArgs& a, const Inputs& in) {
  Buffers b(be, dt);
  const int64_t n = a.batch * a.heads * a.seq * a.head_dim, tt = a.seq * a.seq;
  const void *q = b.upload(in.q), *k = b.upload(in.k), *v = b.upload(in.v), *dy = b.upload(in.dy);
  void* y = b.alloc(n);
  void* attn = b.alloc(a.batch * a.heads * tt);
  void* p = a.rewired ? b.alloc(a.batch * tt) : nullptr;
  void* r = a.rewired ? b.alloc(a.batch * tt) : nullptr;
  void *dq = b.alloc(n), *dk = b.alloc(n), *dv = b.alloc(n);
  be.attention_forward(dt, a, q, k, v, y, attn, p, r);
  be.attention_backward(dt, a, q, k, v, attn, p, dy, dq, dk, dv);
  Result res;
  res.y = b.download(y, n);
  res.dq = b.download(dq, n);
  res.dk = b.download(dk, n);
  res.dv = b.download(dv, n);
  return res;
}

// ---- checks ---------------------------------------------------------------------------

class Runner {
 public:
  static constexpr double kFloor = 0.01;  // see the top of the file

  // max|got - ref| <= rel * max(max|ref|, kFloor) (and no NaN); prints the measured ratio.
  void compare(const std::string& name, const Values& got, const Values& ref, double rel) {
    if (got.size() != ref.size()) return report(name, false, "sizes differ");
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (!std::isfinite(got[i]) || !std::isfinite(ref[i])) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "non-finite at [%zu]: got %g, ref %g", i, got[i], ref[i]);
        return report(name, false, buf);
      }
      max_diff = std::max(max_diff, std::fabs(got[i] - ref[i]));
      max_ref = std::max(max_ref, std::fabs(ref[i]));
    }
    const double ratio = max_diff / std::max(max_ref, kFloor);
    char buf[160];
    std::snprintf(buf, sizeof buf, "max|diff| %.3g, max|ref| %.3g, ratio %.3g (<= %g)", max_diff, max_ref, ratio, rel);
    report(name, ratio <= rel, buf);
  }
  void check(const std::string& name, bool ok, const std::string& detail) { report(name, ok, detail); }
  int finish() const {
    std::printf("%d passed, %d failed\n", passed_, failed_);
    return failed_ == 0 ? 0 : 1;
  }

 private:
  void report(const std::string& name, bool ok, const std::string& detail) {
    (ok ? passed_ : failed_)++;
    std::printf("%s  %-56s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
    std::fflush(stdout);
  }
  int passed_ = 0, failed_ = 0;
};

const Case kCases[] = {
    {"standard", false, false, false, 0, 1.0},
    {"standard alibi", true, false, false, 0, 1.0},
    {"absorption alibi beta 1.3", true, true, false, 1, 1.3},
    {"absorption beta -0.8", false, true, false, 2, -0.8},
    {"absorption alibi beta -0.8", true, true, false, 0, -0.8},
    {"absorption alibi beta 1.3 detach", true, true, true, 3, 1.3},
};

void compare_result(Runner& t, const std::string& name, const Result& got, const Result& ref, double rel,
                    bool saved_state) {
  t.compare(name + " y", got.y, ref.y, rel);
  if (saved_state) {
    t.compare(name + " lse", got.lse, ref.lse, rel);
    if (!ref.runway_lse.empty()) t.compare(name + " runway_lse", got.runway_lse, ref.runway_lse, rel);
  }
  t.compare(name + " dq", got.dq, ref.dq, rel);
  t.compare(name + " dk", got.dk, ref.dk, rel);
  t.compare(name + " dv", got.dv, ref.dv, rel);
}

void test_float32(Runner& t, Backend& cpu, Backend& cuda) {
  for (int64_t seq : {1, 65, 1000, 4096}) {
    for (const Case& c : kCases) {
      const AttentionArgs a = make_args(c, seq);
      const Inputs in = make_inputs(seq, 1000 + static_cast<uint64_t>(seq));
      const std::string name = c.what + " T=" + std::to_string(seq) + " float32";
      try {
        const Result ref = run_blockwise(cpu, DType::Float64, a, in);
        const Result blockwise = run_blockwise(cuda, DType::Float32, a, in);
        const Result materialized = run_materialized(cuda, DType::Float32, a, in);
        compare_result(t, name + " vs cpu", blockwise, ref, 1e-5, true);
        compare_result(t, name + " materialized vs cpu", materialized, ref, 1e-5, false);
        compare_result(t, name + " vs materialized", blockwise, materialized, 1e-5, false);
      } catch (const std::exception& e) {
        t.check(name, false, std::string("threw: ") + e.what());
      }
    }
  }
}

void test_float64(Runner& t, Backend& cpu, Backend& cuda) {
  for (int64_t seq : {65, 1000}) {
    for (const Case& c : kCases) {
      const AttentionArgs a = make_args(c, seq);
      const Inputs in = make_inputs(seq, 2000 + static_cast<uint64_t>(seq));
      const std::string name = c.what + " T=" + std::to_string(seq) + " float64";
      try {
        compare_result(t, name + " vs cpu", run_blockwise(cuda, DType::Float64, a, in),
                       run_blockwise(cpu, DType::Float64, a, in), 1e-10, true);
      } catch (const std::exception& e) {
        t.check(name, false, std::string("threw: ") + e.what());
      }
    }
  }
}

void test_memory(Runner& t, runway::CudaBackend& cuda) {
  constexpr int64_t kSeq = 8192;
  constexpr size_t kBudget = size_t{64} << 20;
  for (const Case& c : {kCases[1], kCases[2]}) {
    const AttentionArgs a = make_args(c, kSeq);
    const std::string name = c.what + " T=8192 forward+backward scratch";
    try {
      const DType dt = DType::Float32;
      const Inputs in = make_inputs(kSeq, 3000);
      Buffers b(cuda, dt);
      const int64_t n = a.batch * a.heads * a.seq * a.head_dim, rows = a.batch * a.heads * a.seq;
      const void *q = b.upload(in.q), *k = b.upload(in.k), *v = b.upload(in.v), *dy = b.upload(in.dy);
      void *y = b.alloc(n), *lse = b.alloc(rows), *runway_lse = b.alloc(a.batch * a.seq);
      void* runway_acc = b.alloc(a.batch * a.seq, DType::Float64);
      void *dq = b.alloc(n), *dk = b.alloc(n), *dv = b.alloc(n);
      cuda.synchronize();
      cuda.empty_cache();
      const size_t live_before = cuda.live_bytes(), held_before = live_before + cuda.cached_bytes();
      cuda.attention_blockwise_forward(dt, a, q, k, v, y, lse, a.rewired ? runway_lse : nullptr,
                                       a.rewired ? runway_acc : nullptr);
      cuda.attention_blockwise_backward(dt, a, q, k, v, y, lse, a.rewired ? runway_lse : nullptr,
                                        a.rewired ? runway_acc : nullptr, dy, dq, dk, dv);
      cuda.synchronize();
      const size_t live_after = cuda.live_bytes(), held_after = live_after + cuda.cached_bytes();
      const size_t growth = held_after - held_before;  // the cache only grows (below OOM)
      char buf[160];
      std::snprintf(buf, sizeof buf, "scratch <= %.1f MiB (budget %.0f MiB)", static_cast<double>(growth) / (1 << 20),
                    static_cast<double>(kBudget) / (1 << 20));
      t.check(name, growth <= kBudget, buf);
      t.check(name + " frees its scratch", live_after == live_before,
              std::to_string(live_after) + " live bytes after, " + std::to_string(live_before) + " before");
      const Values out = b.download(y, n);
      t.check(name + " y finite", std::all_of(out.begin(), out.end(), [](double x) { return std::isfinite(x); }), "");
    } catch (const std::exception& e) {
      t.check(name, false, std::string("threw: ") + e.what());
    }
  }
}

}  // namespace

int main() {
  try {
    runway::load_backends();
    if (runway::testing::skip_without_cuda()) return runway::testing::kSkipExitCode;
    Backend& cpu = runway::backend_for(runway::Device::CPU);
    auto* cuda = dynamic_cast<runway::CudaBackend*>(&runway::backend_for(runway::Device::CUDA));
    if (cuda == nullptr) {
      std::printf("FAIL: the CUDA backend is not a CudaBackend\n");
      return 1;
    }
    std::printf("CUDA device %d: %s\n", cuda->device_index(), cuda->device_description().c_str());
    Runner t;
    test_float32(t, cpu, *cuda);
    test_float64(t, cpu, *cuda);
    test_memory(t, *cuda);
    return t.finish();
  } catch (const std::exception& e) {
    std::printf("FAIL: unexpected exception: %s\n", e.what());
    return 1;
  }
}
