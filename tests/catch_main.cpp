#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "engine/backend.h"

int main(int argc, char* argv[]) {
  runway::load_backends();
  return Catch::Session().run(argc, argv);
}
