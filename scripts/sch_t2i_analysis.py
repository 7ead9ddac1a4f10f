#!/usr/bin/env python3
"""Why SCH's text->image mAP with the learned-B database is what it is (analysis only, numpy).

    .venv/bin/python scripts/sch_t2i_analysis.py RUN [RUN ...] [--data BUNDLE] [--designs N] [--json OUT]

RUN: a `cmh train --method sch ... --out RUN` folder (one `bitsB-seedS/` per length and seed).
Per length (mean over seeds) it prints:
  t2i_B        text->image mAP against the learned training codes B (as report.json; recomputed);
  t2i_classB   the same with every database code replaced by its class's majority code: when it
               equals t2i_B, the learned-B database is in effect one code per class, and the
               direction measures only how the text query codes rank the class codes;
  purity       share of training items whose code equals their class's majority code;
  acc          share of text queries whose nearest class code (Hamming) is their own class;
  tied_top     share of text queries whose nearest class code is tied with another class;
  t2i_real     text->image mAP when the class codes are ranked by the real-valued projection
               <phi(x) W R, class code> instead of the Hamming distance of its sign: what the sign
               of eq. 26 costs at this length.
With --designs N, a simulation of other class-code designs at the same length: the class scores
P = h C^T / bits (h = phi(x) W R, C = the class codes; C's rows are Hadamard rows, so P recovers
each class's coefficient of a linear fit onto one-hot targets), a design G (classes x bits) gives
query codes sgn(P G) against the database codes G[y] (what a linear hash function fitted to G would
give). It prints the mAP of G = C (sim_actual: checks the simulation against t2i_classB) and the
mean and maximum over N random balanced designs (every column splits the classes in halves), and
sim_heldout_gain: the design best on a random half of the queries, scored on the other half,
minus G = C there (what choosing a design would really gain; the maximum above is biased upward).
Single-label data only (Wikipedia, UCI); multi-label runs are refused.
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import cmh_tools  # noqa: E402
from cmh_tools import evaluate, evaluate_distances, hamming_distances, relevance  # noqa: E402


def mean_ap(q, db, ql, dl):
    return evaluate(q, db, ql, dl)["map"]


def simulate_designs(h, cent, y, ql, dl, n_designs, seed):
    """mAP of sgn(P G) against G[y] for G = cent and for n_designs random balanced designs, and
    the held-out gain of picking a design: the queries are halved at random, the design best on
    one half is scored on the other against G = cent (mean over both ways)."""
    classes, bits = cent.shape
    p = h @ cent.T / bits
    rng = np.random.default_rng(seed)
    half = np.array([1] * (classes // 2) + [-1] * (classes - classes // 2))
    designs = [np.stack([rng.permutation(half) for _ in range(bits)], axis=1) for _ in range(n_designs)]

    def score(g, rows):
        return mean_ap(np.where(p[rows] @ g >= 0, 1, -1).astype(np.int8), g[y].astype(np.int8), ql[rows], dl)

    every = np.arange(len(p))
    scores = [score(g, every) for g in designs]
    perm = rng.permutation(len(p))
    halves = (perm[: len(p) // 2], perm[len(p) // 2:])
    gains = []
    for pick, judge in (halves, halves[::-1]):
        best = max(designs, key=lambda g: score(g, pick))
        gains.append(score(best, judge) - score(cent, judge))
    return dict(sim_actual=score(cent, every), sim_random_mean=float(np.mean(scores)), sim_random_max=float(np.max(scores)),
                sim_heldout_gain=float(np.mean(gains)))


def analyse(path, bundle, n_designs):
    run = cmh_tools.Run(path)
    if run.train_codes() is None:
        raise SystemExit(f"{path}: the database is not the training set (no learned-B convention)")
    b, qt = run.train_codes(), run.query_codes("text")
    ql, dl = run.labels("query"), run.labels("db")
    if (dl.sum(1) != 1).any() or (ql.sum(1) != 1).any():
        raise SystemExit(f"{path}: multi-label or unlabelled rows; this analysis needs one class per item")
    y, qy = dl.argmax(1), ql.argmax(1)
    classes = dl.shape[1]
    cent = np.stack([np.where(b[y == c].sum(0) >= 0, 1, -1) for c in range(classes)]).astype(np.int8)
    purity = float((b == cent[y]).all(1).mean())
    t2i_b = mean_ap(qt, b, ql, dl)
    t2i_class = mean_ap(qt, cent[y], ql, dl)
    d = hamming_distances(qt, cent)
    acc = float((d.argmin(1) == qy).mean())
    tied = float(((d == d.min(1, keepdims=True)).sum(1) > 1).mean())
    h = run.model().project("text", bundle.features("text")[run.split("query")])
    if not (np.where(h >= 0, 1, -1) == qt).mean() > 0.999:
        raise SystemExit(f"{path}: re-encoded text queries differ from query_text.npy")
    t2i_real = evaluate_distances(-(h @ cent.T)[:, y], relevance(ql, dl))["map"]
    out = dict(t2i_B=t2i_b, t2i_classB=t2i_class, purity=purity, acc=acc, tied_top=tied, t2i_real=t2i_real)
    if n_designs:
        out.update(simulate_designs(h, cent, y, ql, dl, n_designs, seed=len(y)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", help="the bundle (default: from RUN/run.json)")
    ap.add_argument("--designs", type=int, default=0, help="random class-code designs to simulate per run (0: none)")
    ap.add_argument("--json", help="also write the per-run figures here")
    a = ap.parse_args()
    dump = {}
    for root in a.runs:
        runs = sorted(glob.glob(os.path.join(root, "bits*-seed*")))
        bundle = cmh_tools.Run(runs[0]).bundle(a.data) if runs else None
        if bundle is None:
            raise SystemExit(f"{root}: cannot find the bundle; pass --data")
        per_len = {}
        for run in runs:
            bits = int(re.search(r"bits(\d+)-seed", run).group(1))
            r = analyse(run, bundle, a.designs)
            dump[os.path.abspath(run)] = r
            per_len.setdefault(bits, []).append(r)
        keys = list(next(iter(per_len.values()))[0])
        print(f"{root} ({bundle.path})")
        print("bits seeds " + " ".join(f"{k:>15}" for k in keys))
        for bits in sorted(per_len):
            rows = per_len[bits]
            print(f"{bits:4d} {len(rows):5d} " + " ".join(f"{np.mean([r[k] for r in rows]):15.4f}" for k in keys))
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dump, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
