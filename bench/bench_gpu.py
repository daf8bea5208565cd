#!/usr/bin/env python3
"""GPU training throughput, runway vs PyTorch on the same GPU (run by scripts/gpu-check.sh).

The issue-6 benchmark: a GPT with 12 layers, width 768, 12 heads, T = 1024 (falling
back to T = 512 when a run does not finish in its time limit), batch --batch, float32.
For each row, engine and PyTorch alternate (A B A B) for --rounds rounds; each run is a
fresh process timing --steps training steps (forward, loss, backward, clipping, AdamW)
after --warmup, synchronised at the end of every step. Rows:
    engine standard, engine rewired absorption, engine rewired two_hop,
    PyTorch standard (eager fp32, TF32 off: PyTorch's default for matmuls),
    PyTorch rewired absorption (the same rewiring written with torch ops).
Prints a markdown table (tokens/s = median over rounds) and the two targets:
    engine standard >= PyTorch eager fp32 standard;
    engine rewired absorption step <= 1.3 x engine standard step.
Every run's command line and output go to stderr (scripts/gpu-check.sh keeps them in
bench.log, followed by the table).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, timeout, log):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.write(f"TIMEOUT after {timeout}s: {' '.join(cmd)}\n")
        return None
    log.write(f"$ {' '.join(cmd)}  (exit {p.returncode}, {time.time() - t0:.1f}s)\n{p.stdout}{p.stderr}\n")
    log.flush()
    if p.returncode != 0:
        return None
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True, help="path to bench_train (built with CUDA)")
    ap.add_argument("--python", default=sys.executable, help="python with torch for bench/torch_gpt.py")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=240, help="seconds for everything")
    args = ap.parse_args()
    start = time.time()
    left = lambda: args.budget - (time.time() - start)

    rows = [("engine", "standard", "absorption"), ("engine", "rewired", "absorption"),
            ("engine", "rewired", "two_hop"), ("pytorch", "standard", "absorption"),
            ("pytorch", "rewired", "absorption")]
    results = {r: [] for r in rows}
    seq = args.seq
    log = sys.stderr
    for rnd in range(args.rounds):
        # A B A B: each engine row next to the PyTorch row of the same attention.
        order = [rows[0], rows[3], rows[1], rows[4], rows[2]]
        for who, attention, summary in order:
            if left() < 20:
                log.write("budget spent\n")
                break
            common = ["--layers", str(args.layers), "--width", str(args.width), "--heads", str(args.heads),
                      "--seq", str(seq), "--batch", str(args.batch), "--attention", attention,
                      "--summary", summary, "--steps", str(args.steps), "--warmup", str(args.warmup),
                      "--device", "cuda"]
            cmd = ([args.engine] + common if who == "engine"
                   else [args.python, os.path.join(HERE, "torch_gpt.py")] + common)
            r = run(cmd, min(120, left() - 10), log)
            if r is None and rnd == 0 and who == "engine" and attention == "standard" and seq > 512:
                seq = 512  # the largest that fits the time, as the issue allows
                log.write("falling back to T = 512\n")
                for k in results:
                    results[k].clear()
                continue
            if r is not None:
                results[(who, attention, summary)].append(r)

    def median(key, field="tokens_per_s"):
        v = [r[field] for r in results[key] if field in r]
        return statistics.median(v) if v else None

    sys.stderr.flush()
    print(f"GPT {args.layers} layers, width {args.width}, {args.heads} heads, T = {seq}, batch {args.batch}, "
          f"float32; median over up to {args.rounds} rounds of {args.steps} steps (after {args.warmup})\n")
    print("| run | tokens/s | median step s | GFLOP/s | peak GPU MiB |")
    print("|---|---|---|---|---|")
    for key in rows:
        who, attention, summary = key
        name = f"{who} {attention}" + (f" ({summary})" if attention == "rewired" else "")
        tps = median(key)
        if tps is None:
            print(f"| {name} | not measured | - | - | - |")
            continue
        peak = median(key, "peak_cuda_mb")
        print(f"| {name} | {tps:.0f} | {median(key, 'median_step_s'):.4f} | {median(key, 'gflops'):.0f} | "
              f"{'-' if peak is None else f'{peak:.0f}'} |")
    e_std, t_std = median(rows[0]), median(rows[3])
    e_rew = median(rows[1])
    print()
    if e_std and t_std:
        print(f"- target engine standard >= PyTorch eager fp32: {e_std / t_std:.2f}x "
              f"[{'met' if e_std >= t_std else 'NOT met'}]")
    if e_std and e_rew:
        ratio = e_std / e_rew  # step-time ratio rewired / standard
        print(f"- target engine rewired absorption step <= 1.3 x standard: {ratio:.2f} "
              f"[{'met' if ratio <= 1.3 else 'NOT met'}]")
    return 0 if e_std else 1


if __name__ == "__main__":
    sys.exit(main())
