#!/usr/bin/env bash
# Data-parallel training throughput on this machine (docs/distributed.md,
# docs/performance.md "Data-parallel training"): tokens/s of 1 process x 2 OpenMP threads
# against 2 MPI processes x 1 thread each, for the demo-sized model and for config (d) of
# docs/performance.md, with the same global batch, and the gradient all-reduce's time per
# step (metrics.jsonl: allreduce_seconds). Not a timed test: it prints a Markdown table.
#
#   bench/bench_distributed.sh [BUILD_DIR] [STEPS_DEMO] [STEPS_D]
#
# Uses Debian's fortunes (the default --data). The first 2 steps of every run are left out
# (warm-up); the medians of the rest are reported. Needs mpirun (make deps) and a runway
# built with MPI.
set -euo pipefail
BUILD=${1:-build}
STEPS_DEMO=${2:-20}
STEPS_D=${3:-8}
RUNWAY=$BUILD/apps/runway
[ -x "$RUNWAY" ] || { echo "bench_distributed: no $RUNWAY (make build)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "bench_distributed: no mpirun (make deps installs Open MPI)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# median_of RUN KEY: the median of KEY over the metrics lines after the first two.
median_of() {
  python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][2:]
print(statistics.median(r.get(sys.argv[2], 0.0) for r in rows))' "$1" "$2"
}

DEMO="--n-layer 3 --n-embd 96 --n-head 4 --seq-len 128 --batch-size 16"
CONFIG_D="--n-layer 6 --n-embd 384 --n-head 6 --seq-len 256 --batch-size 8"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
echo
echo "| model | steps | 1 process x 2 threads, tok/s | 2 processes x 1 thread, tok/s | 2 x 1 / 1 x 2 | all-reduce ms/step (2 x 1) | parameters (MiB of float32 gradient) |"
echo "|---|---|---|---|---|---|---|"
for name in demo d; do
  if [ $name = demo ]; then flags=$DEMO steps=$STEPS_DEMO label="demo (L3 C96 H4 T128 B16)"; else flags=$CONFIG_D steps=$STEPS_D label="(d) L6 C384 H6 T256 B8"; fi
  common="train $flags --steps $steps --eval-every 100000 --log-every 100000"
  OMP_NUM_THREADS=2 "$RUNWAY" $common --out "$WORK/$name-1x2" >"$WORK/$name-1x2.log" 2>&1
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS "$RUNWAY" $common --out "$WORK/$name-2x1" \
    >"$WORK/$name-2x1.log" 2>&1
  one=$(median_of "$WORK/$name-1x2" tokens_per_second)
  two=$(median_of "$WORK/$name-2x1" tokens_per_second)
  ar=$(median_of "$WORK/$name-2x1" allreduce_seconds)
  params=$(grep -m1 '^parameters:' "$WORK/$name-1x2.log" | awk '{print $2}')
  python3 -c 'import sys; o,t,a,p=map(float,sys.argv[2:6]); print(f"| {sys.argv[1]} | {sys.argv[6]} | {o:.0f} | {t:.0f} | {t/o:.2f} | {a*1e3:.2f} | {p:.0f} ({p*4/2**20:.1f}) |")' \
    "$label" "$one" "$two" "$ar" "$params" "$steps"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
