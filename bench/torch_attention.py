#!/usr/bin/env python3
"""PyTorch eager twin of one bench_attention --memory cell: causal attention, standard or
runway-rewired (absorption), forward + backward in float32 on the CPU, written the way a
PyTorch user would (the whole (T x T) maps, autograd saving what it needs).

Runs ONE configuration per process, so the peak resident memory is this cell's alone,
and prints one JSON line: {"ms": median ms of the timed rounds, "peak_bytes": growth of
the peak RSS (VmHWM) over the RSS before the first forward, ...}.

Usage: torch_attention.py --kind standard|absorption --T 1024 [--B 1 --H 4 --D 32]
                          [--rounds 3] [--threads 2] [--beta 1.0]
"""
import argparse
import json
import math
import statistics
import time

import torch


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def attention(q, k, v, kind, beta):
    T, D = q.shape[-2], q.shape[-1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
    if kind == "absorption":
        strict = torch.tril(torch.ones(T, T), -1)
        p = torch.softmax(s[:, 0].masked_fill(mask, float("-inf")), dim=-1)  # runway head 0
        lp = p * strict
        r = (torch.cumsum(lp, dim=-2) - lp) * strict  # R[i,j] = sum over j<k<i of P[k,j]
        s = s - beta * r[:, None]
    a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
    return a @ v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["standard", "absorption"], required=True)
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beta", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(a.T)
    shape = (a.B, a.H, a.T, a.D)
    q, k, v, dy = (torch.randn(shape, generator=g) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    base = status_bytes("VmRSS")
    times = []
    for r in range(a.rounds + 1):  # the first run is the warm-up and the memory measurement
        for t in (q, k, v):
            t.grad = None
        t0 = time.perf_counter()
        y = attention(q, k, v, a.kind, a.beta)
        y.backward(dy)
        t1 = time.perf_counter()
        del y
        if r > 0:
            times.append((t1 - t0) * 1e3)
    print(json.dumps({"engine": "pytorch " + torch.__version__, "kind": a.kind, "T": a.T,
                      "ms": statistics.median(times), "peak_bytes": status_bytes("VmHWM") - base}))


if __name__ == "__main__":
    main()
