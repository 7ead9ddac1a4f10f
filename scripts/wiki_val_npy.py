#!/usr/bin/env python3
"""Validation copy of data/wiki_npy for choosing the zero-shot methods' settings (issue 5).

Wikipedia's 693 test items are never used: OUT keeps the same feature, label, class and MiniLM
files (symlinked) but its train.npy / test.npy split only the 2,173 TRAINING rows, exactly as
scripts/make_validation_bundle.py does for a bundle: a seeded permutation
(numpy default_rng(seed), seed 12345) sends 20 % of them (435) to the query role (test.npy) and
the other 80 % (1,738) to the training / database role (train.npy). benches/zeroshot_wiki.rs then
runs its protocols on OUT with `--npy OUT`: for split seed s two of the ten classes are unseen,
the methods train on the 80 % rows of the eight seen classes, the queries are the 20 % rows of
the unseen classes and the database the 80 % rows of the unseen classes.

usage: .venv/bin/python scripts/wiki_val_npy.py [--src data/wiki_npy] [--out data/wiki_npy_val]
"""
import argparse
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="data/wiki_npy")
    ap.add_argument("--out", default="data/wiki_npy_val")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=12345)
    a = ap.parse_args()
    src = os.path.abspath(a.src)
    train = np.load(os.path.join(src, "train.npy"))
    perm = np.random.default_rng(a.seed).permutation(len(train))
    nq = int(round(a.fraction * len(train)))
    query = np.sort(train[perm[:nq]])
    rest = np.sort(train[perm[nq:]])
    os.makedirs(a.out, exist_ok=True)
    for f in ["image.npy", "text.npy", "labels.npy", "classes.json", "minilm.npy"]:
        dst = os.path.join(a.out, f)
        if os.path.lexists(dst):
            os.remove(dst)
        if os.path.exists(os.path.join(src, f)):
            os.symlink(os.path.join(src, f), dst)
    np.save(os.path.join(a.out, "train.npy"), rest.astype(np.int64))
    np.save(os.path.join(a.out, "test.npy"), query.astype(np.int64))
    print(f"{a.out}: {len(rest)} training = database rows, {nq} validation queries, all from {src}/train.npy")


if __name__ == "__main__":
    main()
