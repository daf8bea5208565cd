#!/usr/bin/env bash
# Interleaved pairs of bench_attention cells: materialised then blockwise, each in its own
# process, PAIRS times, and the medians. Short cells (T <= 1024: a few milliseconds) vary
# by +-30% from one process to the next on a shared VM, so one pair says little.
#
#   bench/attention_pairs.sh ./build/bench/bench_attention absorption 1024 11 30
#
# usage: attention_pairs.sh BENCH KIND T [PAIRS=11] [ROUNDS=30]   (KIND: standard, absorption, two_hop)
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 BENCH KIND T [PAIRS] [ROUNDS]" >&2
  exit 2
fi
bench=$1 kind=$2 t=$3 pairs=${4:-11} rounds=${5:-30}
for _ in $(seq "$pairs"); do
  m=$("$bench" --cell "$kind" materialized "$t" "$rounds")
  b=$("$bench" --cell "$kind" blockwise "$t" "$rounds")
  echo "$m $b"
done | python3 -c '
import json, statistics, sys
kind, t = sys.argv[1], sys.argv[2]
pairs = []
for line in sys.stdin:
    m, b = line.split(" ", 1)
    pairs.append((json.loads(m)["ms"], json.loads(b)["ms"]))
mat = statistics.median(p[0] for p in pairs)
blk = statistics.median(p[1] for p in pairs)
ratios = sorted(b / m for m, b in pairs)
print(f"{kind} T={t}: materialized {mat:.1f} ms, blockwise {blk:.1f} ms (medians of {len(pairs)} pairs), "
      f"ratio of medians {blk / mat:.2f}, per-pair ratios " + " ".join(f"{r:.2f}" for r in ratios))
' "$kind" "$t"
