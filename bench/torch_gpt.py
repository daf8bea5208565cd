#!/usr/bin/python3
"""The PyTorch twin of runway's reference GPT (nn/gpt.h), for side-by-side benchmarks.

Same architecture: byte vocabulary (256), pre-LN blocks (LayerNorm eps 1e-5), fused
qkv projection split into heads, RoPE (rotate-half, base 10000) on q and k, causal
attention (standard, or runway-rewired with the absorption or two_hop summary, beta 1,
runway head 0; ../shared/spec/RUNWAY.md), GELU with the tanh approximation, tied
input/output embedding, mean cross-entropy. Same initialisation scheme (GPT-2:
N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 L)), zero biases, unit LayerNorm
weights), same optimizer (AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the
matmul weights only, clipping at global norm 1.0, constant lr 1e-3).

  torch_gpt.py --layers 4 --width 128 --heads 4 --seq 128 --batch 16 \
               --attention standard|rewired --summary absorption|two_hop \
               --steps 10 --warmup 3 --threads 2 --device cpu|cuda
      prints one JSON line, like bench_train (tokens/s, median step, peak memory)

  torch_gpt.py --check DIR
      DIR holds init/grads/step1.safetensors written by `bench_train --dump DIR`:
      loads the engine's initial weights and batch, runs one step, and compares the
      loss, every gradient and the weights after the AdamW step (float64 and float32).

Needs only Debian's python3-torch and python3-numpy (make bench-deps); safetensors
files are read here directly (no `safetensors` package).
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- safetensors (read only) ---------------------------------------------------------

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    """name -> numpy array, plus the metadata dict. Layout: u64 LE header length, JSON
    header, raw little-endian data (offsets relative to the end of the header)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    out = {}
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        out[name] = arr.copy()
    return out, meta


# ---- the model -----------------------------------------------------------------------

def rope(x, base=10000.0):
    """Rotate-half RoPE over (B, H, T, D): pairs (x[c], x[c + D/2]) at position t turn
    by t * base^(-2c/D), as engine/ops/rope.cpp."""
    T, D = x.shape[-2], x.shape[-1]
    half = D // 2
    inv_freq = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / D)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cos(angle).to(x.dtype).to(x.device)
    sin = torch.sin(angle).to(x.dtype).to(x.device)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, C, H, rewired, summary, beta=1.0, runway_head=0):
        super().__init__()
        self.C, self.H = C, H
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.rewired, self.summary, self.beta, self.runway_head = rewired, summary, beta, runway_head

    def forward(self, x, mask, strict):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        if self.rewired:
            r = self.runway_head
            p = torch.softmax(s[:, r].masked_fill(mask, float("-inf")), dim=-1)  # (B, T, T)
            lp = p * strict  # L(P): j < i only
            if self.summary == "absorption":
                # R[i, j] = sum over j < k < i of P[k, j]: exclusive cumulative sum down columns
                rc = (torch.cumsum(lp, dim=-2) - lp) * strict
            else:
                rc = lp @ lp  # R[i, j] = sum over j < k < i of P[i, k] P[k, j]
            s = s - self.beta * rc[:, None]
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        y = (a @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, C, H, rewired, summary):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.attn = Attention(C, H, rewired, summary)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x, mask, strict):
        x = x + self.attn(self.ln_1(x), mask, strict)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, C, H, T, rewired=False, summary="absorption", vocab=256):
        super().__init__()
        self.wte = nn.Embedding(vocab, C)
        self.blocks = nn.ModuleList(Block(C, H, rewired, summary) for _ in range(layers))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        # Causal masks, built once: True above the diagonal (masked); strict = j < i.
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1), persistent=False)
        self.register_buffer("strict", torch.ones(T, T).tril(-1), persistent=False)
        # GPT-2 initialisation, as nn/gpt.cpp.
        proj_std = 0.02 / math.sqrt(2 * layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, proj_std)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.wte(ids)
        mask, strict = self.mask[:T, :T], self.strict[:T, :T]
        for b in self.blocks:
            x = b(x, mask, strict)
        return self.ln_f(x) @ self.wte.weight.t()  # tied output embedding

    def loss(self, ids, targets):
        logits = self.forward(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def engine_name(torch_name):
    """The engine's dotted parameter name of a twin parameter, and whether the engine
    stores it transposed (engine Linear weights are (in, out), nn.Linear's (out, in))."""
    n = torch_name.replace(".fc.", ".mlp.fc.").replace(".mlp_proj.", ".mlp.proj.")
    return n, n.endswith(".weight") and ("attn." in n or "mlp." in n)


def make_optimizer(model, lr, foreach):
    # Weight decay on matmul weights only (nn/module.h NamedParameter::decay): the
    # Linear weights; not biases, LayerNorms or the (tied) embedding.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if engine_name(name)[1] else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=foreach)


def train_step(model, opt, ids, targets, clip):
    opt.zero_grad(set_to_none=True)
    loss = model.loss(ids, targets)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss, norm


# ---- peak memory ---------------------------------------------------------------------

def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_seconds():
    """User + system CPU seconds of this process, all threads (less noisy than wall time
    on a shared machine)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


# ---- modes ---------------------------------------------------------------------------

def benchmark(args):
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    base_rss = rss_mb("VmRSS")
    torch.manual_seed(args.seed)
    model = GPT(args.layers, args.width, args.heads, args.seq, args.attention == "rewired", args.summary).to(dev)
    opt = make_optimizer(model, args.lr, args.foreach)
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, 256, (args.batch, args.seq), generator=g).to(dev)
    targets = torch.randint(0, 256, (args.batch, args.seq), generator=g).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, first_loss, cpu_start = [], None, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            cpu_start = cpu_seconds()
        sync()
        t0 = time.perf_counter()
        loss, _ = train_step(model, opt, ids, targets, args.clip)
        sync()
        t1 = time.perf_counter()
        if step == 0:
            first_loss = loss.item()
        if step >= args.warmup:
            times.append(t1 - t0)
    cpu_per_step = (cpu_seconds() - cpu_start) / args.steps
    med = sorted(times)[len(times) // 2]
    tokens = args.batch * args.seq
    C, L, T = args.width, args.layers, args.seq
    fpt = 6.0 * (L * 12 * C * C + 256 * C) + 6.0 * L * T * C  # as bench_train.cpp
    out = {
        "engine": "pytorch " + torch.__version__, "device": args.device, "layers": L, "width": C,
        "heads": args.heads, "seq": T, "batch": args.batch, "attention": args.attention,
        "summary": args.summary, "threads": args.threads,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": round(tokens / med, 1), "median_step_s": round(med, 5),
        "min_step_s": round(min(times), 5), "cpu_s_per_step": round(cpu_per_step, 5), "flops_per_token": fpt,
        "gflops": round(fpt * tokens / med / 1e9, 2),
        "peak_rss_mb": round(rss_mb("VmHWM"), 1), "base_rss_mb": round(base_rss, 1),
        "first_loss": round(first_loss, 6), "steps_s": [round(t, 5) for t in times],
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out), flush=True)


def check(args):
    """Same weights, same batch: compare one step with the engine's dump."""
    init, meta = read_safetensors(os.path.join(args.check, "init.safetensors"))
    grads, _ = read_safetensors(os.path.join(args.check, "grads.safetensors"))
    step1, _ = read_safetensors(os.path.join(args.check, "step1.safetensors"))
    L, C, H, T = (int(meta[k]) for k in ("layers", "width", "heads", "seq"))
    report = {"config": meta}
    for dtype in (torch.float64, torch.float32):
        torch.set_num_threads(args.threads)
        model = GPT(L, C, H, T, meta["attention"] == "rewired", meta["summary"]).to(dtype)
        with torch.no_grad():
            for name, p in model.named_parameters():
                en, transposed = engine_name(name)
                w = torch.from_numpy(init[en]).to(dtype)
                p.copy_(w.t() if transposed else w)
        opt = make_optimizer(model, args.lr, args.foreach)
        ids = torch.from_numpy(init["ids"])
        targets = torch.from_numpy(init["targets"])
        # train_step's parts, with the gradients copied before clipping scales them in place.
        opt.zero_grad(set_to_none=True)
        loss = model.loss(ids, targets)
        loss.backward()
        raw = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw.values()]))
        # The optimizer on its own: AdamW's first step maps g to about lr * g / (|g| + eps),
        # which magnifies float32 differences of near-zero gradient entries into visible
        # update differences. So the twin's AdamW is given the engine's own gradients,
        # and its update is compared with the engine's.
        with torch.no_grad():
            for name, p in model.named_parameters():
                en, transposed = engine_name(name)
                ge = torch.from_numpy(grads[en]).to(dtype).clone()  # clipping scales it in place
                p.grad = ge.t().contiguous() if transposed else ge
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        worst_grad, worst_name, worst_step = 0.0, "", 0.0
        for name, p in model.named_parameters():
            en, transposed = engine_name(name)
            g = raw[name].t() if transposed else raw[name]
            ge = torch.from_numpy(grads[en]).to(torch.float64)
            g = g.to(torch.float64)
            # relative to the gradient's own scale (max abs), so tiny entries don't dominate
            rel = ((g - ge).abs().max() / ge.abs().max().clamp_min(1e-30)).item()
            if rel > worst_grad:
                worst_grad, worst_name = rel, en
            w = (p.detach().t() if transposed else p.detach()).to(torch.float64)
            we = torch.from_numpy(step1[en]).to(torch.float64)
            w0 = torch.from_numpy(init[en]).to(torch.float64)
            moved = (we - w0).abs().max().item()
            worst_step = max(worst_step, ((w - we).abs().max().item() / max(moved, 1e-30)))
        engine_loss = float(grads["loss"].reshape(-1)[0])
        report[str(dtype).replace("torch.", "")] = {
            "loss_torch": loss.item(), "loss_engine": engine_loss,
            "loss_abs_diff": abs(loss.item() - engine_loss),
            "grad_norm_torch": norm.item(), "grad_norm_engine": float(grads["grad_norm"].reshape(-1)[0]),
            "max_grad_rel_diff": worst_grad, "worst_grad": worst_name,
            "max_adamw_update_rel_diff": worst_step,
        }
    print(json.dumps(report, indent=1))
    # float32 rounding: the engine is float32, so against the float64 twin the loss
    # agrees to ~1e-6 relative and gradients to ~1e-4 of their scale.
    r64 = report["float64"]
    ok = (r64["loss_abs_diff"] < 1e-4 * max(1.0, abs(r64["loss_torch"])) and r64["max_grad_rel_diff"] < 1e-3
          and r64["max_adamw_update_rel_diff"] < 1e-3)
    print("check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--attention", choices=["standard", "rewired"], default="standard")
    ap.add_argument("--summary", choices=["absorption", "two_hop"], default="absorption")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--foreach", action="store_true", help="AdamW's multi-tensor path (default: per tensor)")
    ap.add_argument("--check", metavar="DIR", help="compare one step with bench_train --dump DIR")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_gpt.py: --device cuda but torch.cuda.is_available() is False")
    if args.check:
        sys.exit(check(args))
    benchmark(args)


if __name__ == "__main__":
    main()
