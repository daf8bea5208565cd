# runway: build, test and run. `make deps` installs the Debian packages the build
# needs (only those missing; needs root, as on CI and the dev machines).

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
DEB_PACKAGES := build-essential cmake libeigen3-dev libopenblas-dev libfmt-dev catch2 \
                libcli11-dev nlohmann-json3-dev libstb-dev fortunes fortunes-min

.PHONY: all deps configure build test test-long run bench sanitize clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to apt-get install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make deps: all packages present"; fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j$(JOBS)

# The whole suite except checks labelled "long".
test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) -LE long

test-long: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) -L long

# The main job. Until the demo exists: gradcheck over every op.
run: build
	$(BUILD)/apps/runway gradcheck

bench: build
	$(BUILD)/bench/bench_matmul 1024 20

# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (CPU only).
sanitize: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DRUNWAY_SANITIZE=ON -DRUNWAY_CUDA=OFF
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j$(JOBS) -LE long

clean:
	rm -rf $(BUILD) build-asan
