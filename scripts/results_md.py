#!/usr/bin/env python3
"""Markdown tables of a study's results.json (written by `runway compare`), for docs/results.md.

Every number printed here is read from results.json: means and sds over seeds, and the
paired differences to the first configuration with their 95% t intervals.

    python3 scripts/results_md.py runs/paper-claims/results.json
"""
import json
import math
import sys


def cell(mean, sd, digits):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if sd is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def length_name(T, L):
    return "L" if T == L else (f"{T // L}L" if T % L == 0 else f"{T / L:g}L")


def main(path):
    with open(path) as f:
        results = json.load(f)
    configs = results["configs"]
    L = configs[0]["config"]["seq_len"]

    lengths = [p["T"] for p in configs[0]["bits_per_byte"]]
    header = ["config", "params", "seeds", "val bpb"] + [f"bpb@{length_name(T, L)}" for T in lengths]
    rows = []
    for c in configs:
        v = c["final_val_bits_per_byte"]
        rows.append([c["label"], f"{c['parameters']:.0f}", c["seeds"], cell(v["mean"], v["sd"], 3)] +
                    [cell(p["mean"], p["sd"], 3) for p in c["bits_per_byte"]])
    print("**Bits per byte** (validation split; mean ± sd over seeds; lower is better)\n")
    print(table(header, rows))

    pk_lengths = sorted(configs[0]["passkey_mean_accuracy_by_length"], key=int)
    header = ["config"] + [f"passkey@{T} ({length_name(int(T), L)})" for T in pk_lengths] + ["recall"]
    rows = []
    for c in configs:
        spread = c.get("passkey_accuracy_by_length", {})
        row = [c["label"]]
        for T in pk_lengths:
            s = spread.get(T)
            row.append(cell(s["mean"], s["sd"], 2) if s else cell(c["passkey_mean_accuracy_by_length"][T], None, 2))
        r = c["recall_accuracy"]
        rows.append(row + [cell(r["mean"], r["sd"], 3)])
    print("\n**Passkey** (exact match, mean over needle depths; mean ± sd over seeds) **and recall**\n")
    print(table(header, rows))

    paired = results.get("paired_differences", [])
    if paired:
        names = [m["measure"] for m in paired[0]["measures"]]
        header = ["config"] + names
        rows = []
        for p in paired:
            row = [p["label"]]
            for m in p["measures"]:
                if m["mean"] is None:
                    row.append("-")
                elif m["low"] is None:
                    row.append(f"{m['mean']:+.3f} (n={m['n']})")
                else:
                    star = " *" if m["excludes_zero"] else ""
                    row.append(f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]{star}")
            rows.append(row)
        print(f"\n**Paired differences to {paired[0]['baseline']}** (same seed, same data order; mean over "
              "seeds [95% t interval]; * = the interval excludes 0)\n")
        print(table(header, rows))

    seconds = sum(r["train_seconds"] for c in configs for r in c.get("runs", []))
    runs = sum(len(c.get("runs", [])) for c in configs)
    print(f"\nTraining time summed over the {runs} runs: {seconds / 60:.1f} min "
          "(the runs' own train_seconds; evaluation and inspection not included).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: results_md.py RESULTS_JSON")
    main(sys.argv[1])
