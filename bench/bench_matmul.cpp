// GFLOP/s of an M x K x N float32 matmul through the engine (runway::matmul, which
// calls OpenBLAS sgemm) against calling cblas_sgemm directly on the same buffers.
// Usage: bench_matmul [N=1024] [repeats=20]
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "engine/backend.h"
#include "engine/threads.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace {
template <typename F>
double best_seconds(int repeats, F&& f) {
  f();  // warm-up
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  runway::prefer_passive_omp_wait(argv);
  runway::load_backends();
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1024;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  runway::Generator gen(0);
  runway::Tensor a = runway::Tensor::normal({n, n}, 0, 1, gen);
  runway::Tensor b = runway::Tensor::normal({n, n}, 0, 1, gen);
  std::vector<float> c(n * n);
  const double flops = 2.0 * n * n * n;
  // Alternate A B A B so both see the same machine state.
  double engine = 1e30, direct = 1e30;
  for (int round = 0; round < 3; ++round) {
    engine = std::min(engine, best_seconds(repeats, [&] { runway::matmul(a, b); }));
    // The engine keeps OpenBLAS single-threaded and splits gemms over OpenMP threads
    // itself; the direct call gets OpenBLAS's own threads, as many.
    openblas_set_num_threads(omp_get_max_threads());
    direct = std::min(direct, best_seconds(repeats, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n,
                  b.data<float>(), n, 0.0f, c.data(), n);
    }));
    openblas_set_num_threads(1);
  }
  fmt::print("float32 matmul {}x{}x{} (best of {} x 3 rounds)\n", n, n, n, repeats);
  fmt::print("  engine (runway::matmul): {:8.2f} ms  {:7.1f} GFLOP/s\n", engine * 1e3, flops / engine / 1e9);
  fmt::print("  OpenBLAS cblas_sgemm:    {:8.2f} ms  {:7.1f} GFLOP/s\n", direct * 1e3, flops / direct / 1e9);
  fmt::print("  engine / direct time: {:.3f}\n", engine / direct);
  return 0;
}
