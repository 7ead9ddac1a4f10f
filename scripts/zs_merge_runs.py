#!/usr/bin/env python3
"""Merges the run lists of several benches/zeroshot_wiki.rs JSONs (e.g. protocols run in parallel
processes) into one JSON that `--resume OUT --table-only` prints as one table.

usage: python3 scripts/zs_merge_runs.py OUT.json IN.json [IN.json ...]
A run (protocol, seed, bits, method) present in several inputs is kept once (the first).
"""
import json
import sys


def main():
    out, ins = sys.argv[1], sys.argv[2:]
    merged, seen = None, set()
    for p in ins:
        d = json.load(open(p))
        if merged is None:
            merged = {k: v for k, v in d.items() if k in ("emb", "params")}
            merged["runs"], merged["sources"] = [], []
        merged["sources"].append({"file": p, "wall_s": d.get("wall_s"), "cpu_s": d.get("cpu_s"), "params": d.get("params")})
        for r in d["runs"]:
            key = (r["protocol"], r["seed"], r["bits"], r["method"])
            if key not in seen:
                seen.add(key)
                merged["runs"].append(r)
    json.dump(merged, open(out, "w"), indent=1)
    print(f"{out}: {len(merged['runs'])} runs from {len(ins)} files")


if __name__ == "__main__":
    main()
