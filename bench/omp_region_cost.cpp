// What one OpenMP parallel region costs on this machine, under the wait policy in the
// environment: the number that decides how many regions a training step can afford
// (docs/performance.md, "Round 3"). For each amount of work (elements of a
// multiply-add), the time per iteration of "region, then a short serial gap" against the
// same work done serially.
//
//   OMP_WAIT_POLICY=PASSIVE ./build/bench/omp_region_cost
//   OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=3000 ./build/bench/omp_region_cost
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The serial bookkeeping between two ops of a step (tape, allocation): a few microseconds.
void serial_gap() {
  volatile double x = 0;
  for (int j = 0; j < 2000; ++j) x = x + j;
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 2000;
  if (iterations <= 0) {
    std::fprintf(stderr, "usage: omp_region_cost [ITERATIONS > 0]\n");
    return 2;
  }
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  std::printf("threads %d, OMP_WAIT_POLICY=%s, GOMP_SPINCOUNT=%s, %d iterations\n", omp_get_max_threads(),
              policy ? policy : "(unset)", spin ? spin : "(unset)", iterations);
  std::vector<float> a(1 << 18, 1.0f);
  std::printf("%10s %16s %16s\n", "elements", "parallel us/it", "serial us/it");
  for (int work : {0, 1 << 14, 1 << 16, 1 << 17, 1 << 18}) {
    double t0 = now_us();
    for (int r = 0; r < iterations; ++r) {
#pragma omp parallel for schedule(static)
      for (int i = 0; i < work; ++i) a[i] = a[i] * 1.0001f + 1e-6f;
      serial_gap();
    }
    const double parallel = (now_us() - t0) / iterations;
    t0 = now_us();
    for (int r = 0; r < iterations; ++r) {
      for (int i = 0; i < work; ++i) a[i] = a[i] * 1.0001f + 1e-6f;
      serial_gap();
    }
    const double serial = (now_us() - t0) / iterations;
    std::printf("%10d %16.1f %16.1f\n", work, parallel, serial);
  }
  return 0;
}
