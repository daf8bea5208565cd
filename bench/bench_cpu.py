#!/usr/bin/python3
"""CPU training throughput, runway vs PyTorch, side by side (make bench-cpu).

1. Equivalence: for each attention kind, the engine writes its initial weights, batch,
   first-step loss and gradients (bench_train --dump) and the PyTorch twin
   (torch_gpt.py --check) recomputes them from the same weights.
2. The machine's sgemm peak at the thread count (bench_train --sgemm-peak): the
   physical limit the model GFLOP/s are measured against.
3. Rounds; in each, for every configuration, the engine then PyTorch (A B A B), each a
   fresh process timing `--steps` training steps after `--warmup`. The table shows
   medians over the rounds (ratio: median of the per-round ratios; rewired/standard:
   median of the per-round ratios of the engine's step times, runs close in time).

Model FLOPs per token (forward + backward), the convention of bench_train.cpp:
    6 * (12 L C^2 + 256 C)  +  6 * L * T * C
i.e. 6 per matmul parameter (the tied output projection included), plus Q K^T and A V
over the causal half of the T x T scores. GFLOP/s = FLOPs/token * tokens/s.

Both sides get the same environment: OMP_NUM_THREADS = OPENBLAS_NUM_THREADS =
--threads, OMP_WAIT_POLICY=PASSIVE (see docs/performance.md).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "a": dict(layers=4, width=128, heads=4, seq=128, batch=16, attention="standard", summary="absorption"),
    "b": dict(layers=4, width=128, heads=4, seq=128, batch=16, attention="rewired", summary="absorption"),
    "c": dict(layers=4, width=128, heads=4, seq=128, batch=16, attention="rewired", summary="two_hop"),
    "d": dict(layers=6, width=384, heads=6, seq=256, batch=8, attention="standard", summary="absorption"),
    "d-rewired": dict(layers=6, width=384, heads=6, seq=256, batch=8, attention="rewired", summary="absorption"),
}
LABELS = {
    "a": "(a) L4 C128 H4 T128 B16 standard",
    "b": "(b) L4 C128 H4 T128 B16 rewired absorption",
    "c": "(c) L4 C128 H4 T128 B16 rewired two_hop",
    "d": "(d) L6 C384 H6 T256 B8 standard",
    "d-rewired": "(d) L6 C384 H6 T256 B8 rewired absorption",
}


def flags(cfg):
    out = []
    for k in ("layers", "width", "heads", "seq", "batch", "attention", "summary"):
        out += [f"--{k}", str(cfg[k])]
    return out


def run_json(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_cpu: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"bench_cpu: no JSON line from {' '.join(cmd)}:\n{p.stdout}{p.stderr}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="build/bench/bench_train", help="path to bench_train")
    ap.add_argument("--python", default="/usr/bin/python3", help="the Python with Debian's torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", default="a,b,c,d,d-rewired")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--json", help="also write every raw result here")
    args = ap.parse_args()
    if not os.path.exists(args.engine):
        sys.exit(f"bench_cpu: {args.engine} not found: build it first (cmake --build build --target bench_train)")
    names = args.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            sys.exit(f"bench_cpu: unknown config '{n}': allowed {', '.join(CONFIGS)}")
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, OMP_WAIT_POLICY="PASSIVE")
    torch_cmd = [args.python, os.path.join(HERE, "torch_gpt.py")]
    raw = {"threads": args.threads, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup}

    # 1. the same computation on both sides
    if not args.skip_check:
        print("== equivalence: first step from the same weights (engine float32 vs the twin in float64 and float32)")
        print("| model | loss engine | loss twin (f64) | |diff| | max grad diff / grad scale (f64 twin) | (f32 twin) "
              "| AdamW update diff / update (f64) | result |")
        print("|---|---|---|---|---|---|---|---|")
        raw["check"] = {}
        for name in ("a", "b", "c"):
            cfg = CONFIGS[name]
            with tempfile.TemporaryDirectory() as d:
                run_json([args.engine] + flags(cfg) + ["--steps", "1", "--warmup", "0", "--dump", d], env)
                p = subprocess.run(torch_cmd + ["--check", d, "--threads", t], env=env, capture_output=True, text=True)
                text = p.stdout
                report = json.loads(text[: text.rindex("}") + 1])
            r64, r32 = report["float64"], report["float32"]
            ok = "PASS" if p.returncode == 0 else "FAIL"
            raw["check"][name] = report
            print(f"| {LABELS[name][4:]} | {r64['loss_engine']:.7f} | {r64['loss_torch']:.7f} | {r64['loss_abs_diff']:.1e} "
                  f"| {r64['max_grad_rel_diff']:.1e} | {r32['max_grad_rel_diff']:.1e} "
                  f"| {r64['max_adamw_update_rel_diff']:.1e} | {ok} |")
            if p.returncode != 0:
                sys.exit("bench_cpu: the engine and the twin disagree; not benchmarking\n" + text + p.stderr)

    # 2. the physical limit, measured before and after the runs (the better of the two:
    # on a shared machine a busy moment lowers it, and the limit is what the idle
    # machine can do)
    peaks = [run_json([args.engine, "--sgemm-peak", "2048", "--threads", t], env)]
    print(f"\n== sgemm peak before the runs: {peaks[0]['gflops']:.1f} GFLOP/s", flush=True)

    # 3. A B A B. Rounds outside, configurations inside: the rounds of standard and
    # rewired run minutes apart at most, so the rewired/standard cost is taken per round
    # from runs close in time (a slow phase of a shared machine hits both).
    results = {name: ([], []) for name in names}
    for r in range(args.rounds):
        for name in names:
            common = flags(CONFIGS[name]) + ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", t]
            eng, tor = results[name]
            eng.append(run_json([args.engine] + common, env))
            tor.append(run_json(torch_cmd + common, env))
            print(f"  round {r + 1} {name}: engine {eng[-1]['tokens_per_s']:.0f} tok/s, "
                  f"pytorch {tor[-1]['tokens_per_s']:.0f} tok/s, ratio "
                  f"{eng[-1]['tokens_per_s'] / tor[-1]['tokens_per_s']:.2f}", flush=True)
    raw["results"] = {k: {"engine": v[0], "pytorch": v[1]} for k, v in results.items()}
    peaks.append(run_json([args.engine, "--sgemm-peak", "2048", "--threads", t], env))
    peak = max(peaks, key=lambda p: p["gflops"])
    raw["sgemm_peak"] = peaks
    print(f"\n== sgemm peak ({args.threads} threads, {peak['n']}^3 float32, best of {peak['repeats']}, before and after "
          f"the runs: {peaks[0]['gflops']:.1f} and {peaks[1]['gflops']:.1f}): {peak['gflops']:.1f} GFLOP/s ({peak['how']})")

    med = statistics.median
    print(f"\n== training step, {args.threads} threads, median of {args.rounds} rounds of {args.steps} steps "
          f"(after {args.warmup} warm-up steps)")
    print("| config | engine tok/s | PyTorch tok/s | engine / PyTorch | MFLOP/token | engine GFLOP/s | % of sgemm peak "
          "| PyTorch GFLOP/s | engine CPU s/step | PyTorch CPU s/step | engine peak RSS MiB | PyTorch peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, (eng, tor) in results.items():
        e_tps, t_tps = med([x["tokens_per_s"] for x in eng]), med([x["tokens_per_s"] for x in tor])
        ratio = med([e["tokens_per_s"] / p["tokens_per_s"] for e, p in zip(eng, tor)])
        fpt = eng[0]["flops_per_token"]
        e_gf, t_gf = fpt * e_tps / 1e9, fpt * t_tps / 1e9
        summary[name] = dict(engine=e_tps, pytorch=t_tps, ratio=ratio, gflops=e_gf, peak_pct=100 * e_gf / peak["gflops"],
                             rss_engine=max(x["peak_rss_mb"] for x in eng), rss_torch=max(x["peak_rss_mb"] for x in tor),
                             step_engine=med([x["median_step_s"] for x in eng]))
        print(f"| {LABELS[name]} | {e_tps:.0f} | {t_tps:.0f} | {ratio:.2f} | {fpt / 1e6:.2f} | {e_gf:.1f} "
              f"| {100 * e_gf / peak['gflops']:.0f}% | {t_gf:.1f} | {med([x['cpu_s_per_step'] for x in eng]):.3f} "
              f"| {med([x['cpu_s_per_step'] for x in tor]):.3f} | {summary[name]['rss_engine']:.0f} "
              f"| {summary[name]['rss_torch']:.0f} |")
    raw["summary"] = summary

    print("\n== targets")
    def target(text, ok):
        print(f"  [{'met' if ok else 'NOT met'}] {text}")
    s = summary
    if "a" in s:
        rounds_a = ", ".join(f"{e['tokens_per_s'] / p['tokens_per_s']:.2f}" for e, p in zip(*results["a"]))
        target(f"(a) engine >= 2x PyTorch: {s['a']['ratio']:.2f}x (median of rounds {rounds_a})", s["a"]["ratio"] >= 2.0)
    if "d" in s:
        target(f"(d) engine >= 1.3x PyTorch: {s['d']['ratio']:.2f}x", s["d"]["ratio"] >= 1.3)
        target(f"(d) engine >= 40% of sgemm peak: {s['d']['peak_pct']:.0f}%", s["d"]["peak_pct"] >= 40)
        target(f"(d) engine peak RSS <= PyTorch's: {s['d']['rss_engine']:.0f} vs {s['d']['rss_torch']:.0f} MiB",
               s["d"]["rss_engine"] <= s["d"]["rss_torch"])
    for std, rew in (("a", "b"), ("d", "d-rewired")):
        if std in s and rew in s:
            per_round = [r["median_step_s"] / q["median_step_s"] for r, q in zip(results[rew][0], results[std][0])]
            cost = med(per_round)
            s[rew]["cost_vs_standard"] = cost
            target(f"{LABELS[rew][:3]} rewired absorption step / standard step (engine) <= 1.10: {cost:.2f} "
                   f"(median of rounds {', '.join(f'{x:.2f}' for x in per_round)})", cost <= 1.10)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()
