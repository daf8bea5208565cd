#!/usr/bin/python3
"""Two builds of the engine side by side: bench_train of OLD and NEW on the configurations of
`make bench-cpu` (bench/bench_cpu.py), interleaved (A B, then B A, ...) so that a busy
neighbour hits both; prints each run and, per configuration, the median tok/s of each and
the median of the per-round NEW/OLD ratios.

Usage: bench/compare_engines.py OLD/bench_train NEW/bench_train [--rounds 6] [--steps 8]
"""
import argparse
import json
import os
import statistics
import subprocess

from bench_cpu import CONFIGS, flags


def tokens_per_s(exe, cfg, steps, env):
    p = subprocess.run([exe] + flags(cfg) + ["--steps", str(steps), "--warmup", "3", "--threads", "2"], env=env,
                       capture_output=True, text=True, check=True)
    return json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])["tokens_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--configs", default="a,b,d,d-rewired")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    names = a.configs.split(",")
    runs = {k: {"old": [], "new": []} for k in names}
    for r in range(a.rounds):
        order = (("old", a.old), ("new", a.new)) if r % 2 == 0 else (("new", a.new), ("old", a.old))
        for k in names:
            for side, exe in order:
                runs[k][side].append(tokens_per_s(exe, CONFIGS[k], a.steps, env))
        print(r, {k: (round(v["old"][-1]), round(v["new"][-1])) for k, v in runs.items()}, flush=True)
    for k, v in runs.items():
        ratio = statistics.median(n / o for o, n in zip(v["old"], v["new"]))
        print(f"{k}: old {statistics.median(v['old']):.0f} tok/s, new {statistics.median(v['new']):.0f} tok/s, "
              f"new/old {ratio:.3f}")


if __name__ == "__main__":
    main()
