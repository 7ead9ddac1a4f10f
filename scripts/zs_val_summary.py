#!/usr/bin/env python3
"""Summarises validation runs of benches/zeroshot_wiki.rs (issue 5 settings selection).

usage: python3 scripts/zs_val_summary.py [--seeds 100-104] RUN.json [RUN.json ...]
For each file and method: mean mAP over the split seeds per protocol (I→T / T→I) and the
selection score = mean over protocols (b), (c), (d) and both directions (the rule in
benches/zeroshot_results.md). Only the runs present are averaged; the seed count is shown.
"""
import json
import sys
from collections import defaultdict


def main():
    args = sys.argv[1:]
    seeds = None
    if args and args[0] == "--seeds":
        lo, hi = args[1].split("-")
        seeds = set(range(int(lo), int(hi) + 1))
        args = args[2:]
    for path in args:
        runs = json.load(open(path))["runs"]
        cells = defaultdict(list)
        for r in runs:
            if "i2t" in r and (seeds is None or r["seed"] in seeds):
                cells[(r["method"], r["bits"], r["protocol"])].append((r["i2t"], r["t2i"], r["seed"]))
        methods = sorted({(m, b) for m, b, _ in cells})
        for m, b in methods:
            parts, score, n = [], [], []
            for p in "abcd":
                v = cells.get((m, b, p))
                if not v:
                    continue
                i = sum(x[0] for x in v) / len(v)
                t = sum(x[1] for x in v) / len(v)
                parts.append(f"({p}) {i:.4f}/{t:.4f}")
                n.append(len(v))
                if p in "bcd":
                    score += [i, t]
            s = sum(score) / len(score) if score else float("nan")
            name = path.rsplit("/", 1)[-1].removesuffix(".json")
            print(f"{name:<18} {m:<11} {b:>3}  score {s:.4f}  n={min(n)}  " + "  ".join(parts))


if __name__ == "__main__":
    main()
