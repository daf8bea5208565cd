# runway: build, test and run. `make deps` installs the Debian packages the build
# needs (only those missing; needs root, as on CI and the dev machines).

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
DEB_PACKAGES := build-essential cmake libeigen3-dev libopenblas-dev libfmt-dev catch2 libopenmpi-dev openmpi-bin \
                libcli11-dev nlohmann-json3-dev libstb-dev fortunes fortunes-min python3

.PHONY: all deps configure build test test-long run gradcheck bench bench-deps bench-cpu sanitize fuzz fuzz-deps clean gpu-bundle

all: build

# $(call apt_install_missing,TARGET,PACKAGES): apt-get installs those of PACKAGES that
# are not installed yet (needs root only when some are missing).
define apt_install_missing
	@missing=""; for p in $(2); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make $(1): installing$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make $(1): need root to apt-get install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make $(1): all packages present"; fi
endef

deps:
	$(call apt_install_missing,deps,$(DEB_PACKAGES))

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j$(JOBS)

# The whole suite except checks labelled "long". --no-tests=error: a run that matches no
# test fails. The entry catch_cases_match_ctest_entries checks that every Catch2 case is
# exactly one CTest entry (scripts/check-test-count.sh).
test: build
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -j$(JOBS) -LE long

test-long: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) -L long

# The main job: train a standard and a rewired model of the same shape, evaluate and
# inspect both, write runs/demo/report.html (about 5 minutes on 2 cores).
# DEMO_FLAGS=--quick for under a minute.
DEMO_FLAGS ?=
run: build
	$(BUILD)/apps/runway demo $(DEMO_FLAGS)

# Every op's gradient against float64 central differences.
gradcheck: build
	$(BUILD)/apps/runway gradcheck

bench: build
	$(BUILD)/bench/bench_matmul 1024 20

# The PyTorch twin's packages (Debian's python3-torch and numpy; only those missing,
# needs root like `deps`). Only the benchmark needs them, not the build or the tests.
BENCH_PACKAGES := python3-torch python3-numpy
bench-deps:
	$(call apt_install_missing,bench-deps,$(BENCH_PACKAGES))

# CPU training speed, runway vs PyTorch side by side (A B A B, 2 threads each); prints
# the equivalence check, the sgemm peak and the table of docs/performance.md.
BENCH_ROUNDS ?= 5
bench-cpu: build bench-deps
	/usr/bin/python3 bench/bench_cpu.py --engine $(BUILD)/bench/bench_train --rounds $(BENCH_ROUNDS) \
	  --json $(BUILD)/bench_cpu.json

# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (CPU only).
sanitize: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DRUNWAY_SANITIZE=ON -DRUNWAY_CUDA=OFF
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j$(JOBS) -LE long

# Fuzzing (fuzz/README.md): each libFuzzer harness runs for FUZZ_SECONDS under ASan +
# UBSan, built with clang in build-fuzz. New inputs go to build-fuzz/corpus-NAME; the
# seeds in fuzz/corpus and fuzz/regressions are read, never written. Crashing inputs land
# in build-fuzz/artifacts-NAME/ and stop the run.
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES ?= npy safetensors config checkpoint
FUZZ_CXX ?= clang++-14
FUZZ_PACKAGES := clang-14 libfuzzer-14-dev libclang-rt-14-dev libomp-14-dev
fuzz-deps:
	$(call apt_install_missing,fuzz-deps,$(FUZZ_PACKAGES))

fuzz: deps fuzz-deps
	cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) \
	  -DRUNWAY_FUZZ=ON -DRUNWAY_CUDA=OFF -DRUNWAY_WERROR=OFF
	cmake --build build-fuzz -j$(JOBS) --target $(addprefix fuzz_,$(FUZZ_HARNESSES))
	@set -e; for h in $(FUZZ_HARNESSES); do \
	  mkdir -p build-fuzz/corpus-$$h build-fuzz/artifacts-$$h; \
	  max_len=4096; if [ $$h = checkpoint ]; then max_len=16384; fi; \
	  seeds=fuzz/corpus/$$h; if [ -d fuzz/regressions/$$h ]; then seeds="$$seeds fuzz/regressions/$$h"; fi; \
	  dict=; if [ -f fuzz/dict/$$h.dict ]; then dict=-dict=fuzz/dict/$$h.dict; fi; \
	  echo "make fuzz: $$h for $(FUZZ_SECONDS) s (log: build-fuzz/fuzz-$$h.log)"; \
	  if ! build-fuzz/fuzz/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=$$max_len \
	       -timeout=10 -print_final_stats=1 -artifact_prefix=build-fuzz/artifacts-$$h/ $$dict \
	       build-fuzz/corpus-$$h $$seeds > build-fuzz/fuzz-$$h.log 2>&1; then \
	    tail -n 60 build-fuzz/fuzz-$$h.log; \
	    echo "make fuzz: $$h FOUND A PROBLEM; the input is in build-fuzz/artifacts-$$h/" >&2; exit 1; fi; \
	  awk -v h=$$h '/number_of_executed_units/ {n=$$2} /average_exec_per_sec/ {r=$$2} \
	    END {printf "make fuzz: %s: %d executions, %d exec/s, no findings\n", h, n, r}' build-fuzz/fuzz-$$h.log; \
	done

# bundle/: the CUDA tests and the runway CLI built for the H200 (sm_90, x86-64-v3), with
# the shared libraries a GPU machine without Debian packages lacks, found by $ORIGIN
# (DT_RPATH, so libopenblas finds libgfortran beside it too). Not bundled: glibc,
# libstdc++/libgcc_s, the driver's libcuda, and CUDA 13's libcudart/libcublas(Lt)
# (over 500 MiB; the GPU machine's CUDA toolkit or PyTorch provides them, and
# scripts/gpu-check.sh finds them). Run there: scripts/gpu-check.sh OUTDIR.
BUNDLE_TARGETS := test_cuda_backend test_cuda_parity test_cuda_model runway bench_train
BUNDLE_SKIP_LIBS := linux-vdso ld-linux libc.so libm.so libdl.so libpthread.so librt.so \
                    libstdc++.so libgcc_s.so libcuda.so libcudart.so libcublas.so libcublasLt.so libnccl.so

gpu-bundle: deps
	cmake -S . -B build-bundle -DCMAKE_BUILD_TYPE=Release -DRUNWAY_CUDA=ON \
	  -DCMAKE_CUDA_ARCHITECTURES=90 -DRUNWAY_ARCH=x86-64-v3 \
	  '-DCMAKE_BUILD_RPATH=$$ORIGIN' -DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags $(CMAKE_FLAGS)
	cmake --build build-bundle -j$(JOBS) --target $(BUNDLE_TARGETS)
	rm -rf bundle && mkdir -p bundle
	cp build-bundle/tests/cuda/test_cuda_backend build-bundle/tests/cuda/test_cuda_parity build-bundle/tests/cuda/test_cuda_model \
	  build-bundle/apps/runway build-bundle/bench/bench_train bundle/
	@set -e; cd bundle; \
	for lib in $$(ldd test_cuda_backend test_cuda_parity test_cuda_model runway bench_train | awk '$$2 == "=>" && $$3 ~ /^\// {print $$3}' | sort -u); do \
	  skip=0; for s in $(BUNDLE_SKIP_LIBS); do case "$$(basename $$lib)" in $$s*) skip=1;; esac; done; \
	  if [ $$skip = 0 ]; then echo "gpu-bundle: + $$lib"; cp -L "$$lib" .; fi; \
	done; \
	{ echo "runway GPU bundle"; \
	  echo "commit: $$(git -C .. rev-parse HEAD 2>/dev/null)$$(git -C .. diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"; \
	  echo "built: $$(date -u +%Y-%m-%dT%H:%M:%SZ) on $$(. /etc/os-release && echo $$PRETTY_NAME), $$(nvcc --version 2>/dev/null | tail -1)"; \
	  echo "flags: Release, CUDA arch 90, -march=x86-64-v3"; \
	  for f in test_cuda_backend test_cuda_parity test_cuda_model runway bench_train; do echo "== ldd $$f"; ldd $$f; done; } > MANIFEST.txt; \
	if ldd test_cuda_backend test_cuda_parity test_cuda_model runway bench_train | grep -v 'libcud\|libcublas\|libnccl' | grep -q 'not found'; then \
	  echo "gpu-bundle: a library is not found from bundle/:" >&2; ldd runway >&2; exit 1; fi; \
	echo "gpu-bundle: $$(du -sh . | cut -f1) in bundle/ ($$(ls | wc -l) files)"; du -b * | sort -n | sed 's/^/  /'

clean:
	rm -rf $(BUILD) build-asan
