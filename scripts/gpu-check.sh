#!/usr/bin/env bash
# scripts/gpu-check.sh OUTDIR: the checks to run on an NVIDIA GPU machine (made for the
# H200 machine: CUDA 13, PyTorch, no Debian packages, no network). Fits in 8 minutes.
#
# Binaries come from bundle/ (`make gpu-bundle` on a machine with the Debian packages,
# then carry bundle/ along); without it, from build/ (or $RUNWAY_BUILD) where those
# were built on this machine. Writes to OUTDIR (at most 8 files, flat, so all of them
# come back from the device tool):
#   summary.md             pass/fail and seconds per step, the first failures
#   nvidia-smi.txt         the GPU, driver and CUDA versions
#   env.txt                where the binaries and CUDA libraries came from, ldd
#   test_cuda_backend.log  backend-vs-backend kernel parity (tests/cuda/test_cuda_backend.cpp)
#   test_cuda_parity.log   CPU-vs-CUDA op-table parity, forward and backward
#   test_cuda_model.log    whole-model CPU-vs-CUDA parity (loss, gradients, 10-step curve)
#                          and `--device cuda` training, checkpoints, resume across devices
#   bench.log              the training benchmark, engine vs PyTorch (bench/bench_gpu.py):
#                          every run's output; its table is also in summary.md
# Exit code 0 only when every step passed.
#
# Environment: RUNWAY_BUNDLE (default <repo>/bundle), RUNWAY_BUILD (default <repo>/build),
# RUNWAY_GPU_CHECK_BUDGET (seconds for the whole script, default 480).

set -u
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUTDIR=$1
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=${RUNWAY_BUNDLE:-$ROOT/bundle}
BUILD=${RUNWAY_BUILD:-$ROOT/build}
BUDGET=${RUNWAY_GPU_CHECK_BUDGET:-480}
T0=$(date +%s)
SUMMARY_ROWS=()
FAILED=0

now_ms() { date +%s%3N; }
remaining() { echo $((BUDGET - ($(date +%s) - T0))); }

# run_step NAME LIMIT_S LOGFILE CMD...: runs CMD with a time limit (cut to what is
# left of the budget, keeping 20 s for the summary), output to OUTDIR/LOGFILE, and adds
# a row to the summary. Exit 0 = PASS, 77 = SKIP (no usable CUDA device: a failure
# here, since this script is for GPU machines), 124/137 = TIMEOUT.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$(($(remaining) - 20))
  if [ "$left" -lt 5 ]; then
    SUMMARY_ROWS+=("| $name | NOT RUN (time budget spent) | - | - |")
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local start end rc status detail
  start=$(now_ms)
  timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$log" 2>&1
  rc=$?
  end=$(now_ms)
  case $rc in
    0) status=PASS ;;
    77) status="SKIP (exit 77: no usable CUDA device)"; FAILED=1 ;;
    124 | 137) status="TIMEOUT after ${limit}s"; FAILED=1 ;;
    *) status="FAIL (exit $rc)"; FAILED=1 ;;
  esac
  # The tests end with "N passed, M failed[, K skipped]".
  detail=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUTDIR/$log" | tail -1)
  [ -n "$detail" ] && status="$status: $detail"
  local secs
  secs=$(awk -v ms=$((end - start)) 'BEGIN { printf "%.1f", ms / 1000 }')
  echo "   $status (${secs}s)"
  SUMMARY_ROWS+=("| $name | $status | $secs | $log |")
}

# ---- the GPU ------------------------------------------------------------------------
run_step nvidia-smi 60 nvidia-smi.txt nvidia-smi
GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)

# ---- the binaries ------------------------------------------------------------------------
BINS=(test_cuda_backend test_cuda_parity test_cuda_model)
BIN_DIR=""
if [ -x "$BUNDLE/test_cuda_parity" ] && [ -x "$BUNDLE/test_cuda_backend" ]; then
  BIN_DIR=$BUNDLE
  SOURCE="bundle $BUNDLE"
elif [ -x "$BUILD/tests/cuda/test_cuda_parity" ] && [ -x "$BUILD/tests/cuda/test_cuda_backend" ]; then
  BIN_DIR=$BUILD/tests/cuda
  SOURCE="build tree $BUILD"
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -n) $(uname -r) $(uname -m)"
  [ -r /etc/os-release ] && echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "binaries: ${SOURCE:-none found (no $BUNDLE/, no $BUILD/tests/cuda/)}"
  [ -r "$BUNDLE/MANIFEST.txt" ] && { echo "== $BUNDLE/MANIFEST.txt"; cat "$BUNDLE/MANIFEST.txt"; }
} >"$OUTDIR/env.txt"

if [ -z "$BIN_DIR" ]; then
  echo "gpu-check: no CUDA test binaries: run 'make gpu-bundle' where the Debian packages are and" \
    "bring bundle/ here, or build with CUDA into $BUILD" | tee -a "$OUTDIR/env.txt" >&2
  SUMMARY_ROWS+=("| binaries | FAIL: none found (no bundle/, no build/tests/cuda/) | - | env.txt |")
  FAILED=1
else
  # Libraries: the bundle's own (RPATH $ORIGIN; also on LD_LIBRARY_PATH for any that
  # resolve through another library), then CUDA 13's libcudart/libcublas, which the
  # bundle leaves to this machine: from the CUDA toolkit or PyTorch's nvidia-* wheels.
  export LD_LIBRARY_PATH="$BIN_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing() {
    local b
    for b in "${BINS[@]}"; do [ -x "$BIN_DIR/$b" ] && ldd "$BIN_DIR/$b" 2>/dev/null; done |
      awk '/not found/ {print $1}' | sort -u
  }
  if [ -n "$(missing)" ]; then
    dirs=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
    for d in /usr/local/cuda-*/lib64; do [ -d "$d" ] && dirs+=("$d"); done
    if command -v python3 >/dev/null; then
      while IFS= read -r sp; do
        [ -d "$sp/nvidia" ] || continue
        while IFS= read -r f; do dirs+=("$(dirname "$f")"); done \
          < <(find "$sp/nvidia" -maxdepth 4 \( -name 'libcublas*.so.*' -o -name 'libcudart.so.*' \) 2>/dev/null)
      done < <(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)
    fi
    for lib in $(missing); do
      for d in "${dirs[@]}"; do
        if [ -e "$d/$lib" ]; then
          case ":$LD_LIBRARY_PATH:" in *":$d:"*) ;; *) LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d" ;; esac
          break
        fi
      done
    done
    export LD_LIBRARY_PATH
  fi
  {
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for b in "${BINS[@]}"; do echo "== ldd $BIN_DIR/$b"; ldd "$BIN_DIR/$b"; done
  } >>"$OUTDIR/env.txt" 2>&1
  if [ -n "$(missing)" ]; then
    echo "gpu-check: libraries not found: $(missing | tr '\n' ' ')" | tee -a "$OUTDIR/env.txt" >&2
    SUMMARY_ROWS+=("| libraries | FAIL: not found: $(missing | tr '\n' ' ') | - | env.txt |")
    FAILED=1
  fi

  # ---- the CUDA tests ------------------------------------------------------------------
  run_step test_cuda_backend 150 test_cuda_backend.log "$BIN_DIR/test_cuda_backend"
  run_step test_cuda_parity 200 test_cuda_parity.log "$BIN_DIR/test_cuda_parity"
  # Whole model on CPU and CUDA; ~20 s of it is the CPU side on a small machine.
  if [ -x "$BIN_DIR/test_cuda_model" ]; then
    run_step test_cuda_model 120 test_cuda_model.log "$BIN_DIR/test_cuda_model"
  else
    SUMMARY_ROWS+=("| test_cuda_model | FAIL: no $BIN_DIR/test_cuda_model (rebuild the bundle) | - | - |")
    FAILED=1
  fi
fi

# ---- the training benchmark: engine vs PyTorch on this GPU ------------------------------
# bench/bench_gpu.py alternates bench_train --device cuda and bench/torch_gpt.py --device
# cuda (GPT 12 x 768, 12 heads, T = 1024, batch 8); its table goes into the summary.
BENCH_TABLE=""
ENGINE_BENCH=$BIN_DIR/bench_train
[ "$BIN_DIR" = "$BUILD/tests/cuda" ] && ENGINE_BENCH=$BUILD/bench/bench_train
if [ -n "$BIN_DIR" ] && [ -x "$ENGINE_BENCH" ]; then
  PY=$(command -v python3 || true)
  if [ -n "$PY" ] && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    left=$(($(remaining) - 25))
    if [ "$left" -gt 60 ]; then
      run_step "training benchmark vs PyTorch" "$left" bench.log \
        "$PY" "$ROOT/bench/bench_gpu.py" --engine "$ENGINE_BENCH" --python "$PY" --budget $((left - 10))
      BENCH_TABLE=$(sed -n '/^GPT /,$p' "$OUTDIR/bench.log")
    else
      SUMMARY_ROWS+=("| training benchmark vs PyTorch | NOT RUN (time budget spent) | - | - |")
      FAILED=1
    fi
  else
    SUMMARY_ROWS+=("| training benchmark vs PyTorch | FAIL: no python3 with a CUDA-enabled torch | - | - |")
    FAILED=1
  fi
else
  SUMMARY_ROWS+=("| training benchmark vs PyTorch | FAIL: no $ENGINE_BENCH (rebuild the bundle) | - | - |")
  FAILED=1
fi

# ---- data-parallel training through NCCL, N = 1 (docs/distributed.md) ------------------
# The runway CLI's gradient all-reduce on the GPU (ncclAllReduce on the flat device
# buffer, replica checksums): under mpirun -np 1 where Open MPI is installed, otherwise
# as a single rank without MPI (RUNWAY_DATA_PARALLEL_SELF=1). Skipped when the binary
# was built without NCCL. libnccl is not bundled (over 200 MiB): from the CUDA toolkit or
# PyTorch's nvidia-nccl wheel.
RUNWAY_BIN=""
if [ -x "$BUNDLE/runway" ]; then RUNWAY_BIN=$BUNDLE/runway; elif [ -x "$BUILD/apps/runway" ]; then RUNWAY_BIN=$BUILD/apps/runway; fi
if [ -n "$RUNWAY_BIN" ] && ldd "$RUNWAY_BIN" 2>/dev/null | grep -q 'libnccl'; then
  if ldd "$RUNWAY_BIN" 2>/dev/null | grep -q 'libnccl.*not found'; then
    ndirs=(/usr/local/cuda/lib /usr/local/cuda/lib64)
    for d in /usr/local/cuda-*/lib /usr/local/cuda-*/lib64; do [ -d "$d" ] && ndirs+=("$d"); done
    if command -v python3 >/dev/null; then
      while IFS= read -r f; do ndirs+=("$(dirname "$f")"); done < <(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + sys.path))' 2>/dev/null |
        while IFS= read -r sp; do [ -d "$sp/nvidia" ] && find "$sp/nvidia" -maxdepth 4 -name 'libnccl.so.*' 2>/dev/null; done)
    fi
    for d in "${ndirs[@]}"; do
      if [ -e "$d/libnccl.so.2" ]; then export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"; break; fi
    done
  fi
  NCCL_TRAIN="\"$RUNWAY_BIN\" train --device cuda --out \"$OUTDIR/nccl-run\" --overwrite --data \"$ROOT/docs\" --steps 20 \
--n-layer 2 --n-head 2 --n-embd 64 --seq-len 64 --batch-size 8 --eval-every 20 --eval-batches 2"
  if command -v mpirun >/dev/null; then
    NCCL_TRAIN="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 1 $NCCL_TRAIN"
  else
    NCCL_TRAIN="RUNWAY_DATA_PARALLEL_SELF=1 $NCCL_TRAIN"
  fi
  run_step "data-parallel training, NCCL all-reduce, N = 1" 120 nccl-train.log \
    bash -c "$NCCL_TRAIN && grep -q 'gradients summed by NCCL all-reduce' \"$OUTDIR/nccl-train.log\""
else
  SUMMARY_ROWS+=("| data-parallel training, NCCL all-reduce, N = 1 | SKIP: ${RUNWAY_BIN:-no runway binary} has no NCCL (built without MPI or nccl.h) | - | - |")
fi

# ---- summary ------------------------------------------------------------------------------
{
  echo "# runway GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), total $(($(date +%s) - T0)) s of a ${BUDGET} s budget"
  echo "- GPU: ${GPU_LINE:-unknown (nvidia-smi failed)}"
  echo "- binaries: ${SOURCE:-none}"
  [ -r "$BUNDLE/MANIFEST.txt" ] && echo "- bundle: $(grep -m1 '^commit:' "$BUNDLE/MANIFEST.txt")"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${SUMMARY_ROWS[@]}"
  echo
  if [ -n "$BENCH_TABLE" ]; then
    echo "## Training step throughput"
    echo
    echo "$BENCH_TABLE"
    echo
  fi
  if [ "$FAILED" = 0 ]; then
    echo "All steps passed."
  else
    echo "Some steps did not pass. First failures:"
    echo
    echo '```'
    for log in test_cuda_backend.log test_cuda_parity.log test_cuda_model.log; do
      [ -r "$OUTDIR/$log" ] && grep -E '^(FAIL|SKIP)' "$OUTDIR/$log" | head -20 | sed "s/^/$log: /"
    done
    echo '```'
  fi
} >"$OUTDIR/summary.md"

cat "$OUTDIR/summary.md"
exit $FAILED
