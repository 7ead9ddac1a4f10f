#!/usr/bin/env python3
"""Streaming-encode benchmark: items/s and peak RSS of `cmh encode` for growing numbers of items.

Writes float32 feature files of --dim values per item (Dirichlet rows, like LDA topic vectors;
seeded) into --data-dir, once, then runs

    /usr/bin/time -v target/release/cmh --threads 1 encode --model MODEL --modality text \\
        --features text_N.npy --out enc_N --packed-only --quiet

for each size and prints one table row per size (wall and CPU time, items/s, peak RSS). A constant
peak RSS across sizes shows that memory is bounded by the chunk, not by the number of items.

    .venv/bin/python scripts/bench_encode.py --model runs/enc_wiki_a100/bits64-seed0/model \\
        --sizes 1000000 10000000 [100000000]

The model must take --dim-dimensional text features (the Wikipedia bundle's text side has 10):
    target/release/cmh --threads 1 train --method cca-itq --data data/wiki --bits 64 \\
        --param anchors=100 --out runs/enc_wiki_a100
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def features(path, n, dim):
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, dim):
        return
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp.npy")
    a = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    step = 1 << 22
    for s in range(0, n, step):
        e = min(n, s + step)
        a[s:e] = rng.dirichlet(np.ones(dim), size=e - s).astype(np.float32)
    a.flush()
    del a
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench_encode")
    ap.add_argument("--cmh", type=Path, default=ROOT / "target" / "release" / "cmh")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print("| items | input | output | wall | CPU (user + sys) | items/s wall | items/CPU-s | peak RSS | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        feat = args.data_dir / f"text_{n}.npy"
        features(feat, n, args.dim)
        out = args.data_dir / f"enc_{n}"
        load = os.getloadavg()[0]
        cmd = ["/usr/bin/time", "-v", str(args.cmh), "--threads", "1", "encode", "--model", str(args.model), "--modality", "text",
               "--features", str(feat), "--out", str(out), "--packed-only", "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            sys.exit(f"failed: {' '.join(cmd)}")
        field = lambda name: re.search(rf"{name}: (.+)", r.stderr).group(1).strip()
        wall = field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")
        wall_s = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
        cpu = float(field("User time \\(seconds\\)")) + float(field("System time \\(seconds\\)"))
        rss = int(field(r"Maximum resident set size \(kbytes\)")) * 1024
        packed = Path(f"{out}_packed.npy")
        print(f"| {n:,} | {feat.stat().st_size / 1e9:.2f} GB float32 | {packed.stat().st_size / 1e6:.0f} MB packed | {wall_s:.1f} s "
              f"| {cpu:.1f} s | {n / wall_s:,.0f} | {n / cpu:,.0f} | {rss / 1e6:.0f} MB | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
