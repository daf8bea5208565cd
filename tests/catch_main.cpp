#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "engine/backend.h"
#include "engine/threads.h"

int main(int argc, char* argv[]) {
  runway::prefer_passive_omp_wait(argv);
  runway::load_backends();
  return Catch::Session().run(argc, argv);
}
