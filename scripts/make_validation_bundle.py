#!/usr/bin/env python3
"""Writes a VALIDATION bundle carved from a bundle's training items, for choosing settings.

20 % of the bundle's training items (seeded permutation, numpy default_rng(seed), seed 12345 by
default) become the queries; the other 80 % are the training set and the retrieval database. The
bundle's test queries are never referenced. Feature, label and class-embedding files are
symlinked, bundle.json is copied with the new split files.

usage: .venv/bin/python scripts/make_validation_bundle.py BUNDLE OUT [--fraction 0.2] [--seed 12345]
then:  cmh train --method segh --data OUT --bits 16,32,64,128 --repeat 3 --param anchors=1000 --out RUN
"""
import argparse
import json
import os
import shutil

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("out")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=12345)
    a = ap.parse_args()
    src = os.path.abspath(a.bundle)
    meta = json.load(open(os.path.join(src, "bundle.json")))
    train = np.load(os.path.join(src, meta["split"]["train"]))
    perm = np.random.default_rng(a.seed).permutation(len(train))
    nq = int(round(a.fraction * len(train)))
    query = np.sort(train[perm[:nq]])
    rest = np.sort(train[perm[nq:]])
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    for f in os.listdir(src):
        if f.endswith(".npy") and not f.startswith("split_"):
            os.symlink(os.path.join(src, f), os.path.join(a.out, f))
    np.save(os.path.join(a.out, "split_train.npy"), rest.astype(np.int64))
    np.save(os.path.join(a.out, "split_database.npy"), rest.astype(np.int64))
    np.save(os.path.join(a.out, "split_query.npy"), query.astype(np.int64))
    meta["split"] = {"train": "split_train.npy", "query": "split_query.npy", "database": "split_database.npy"}
    meta["name"] = meta.get("name", "bundle") + "-validation"
    meta["source"] = f"validation split of {src}: {nq} of its {len(train)} training items as queries (seed {a.seed}), the rest train = database"
    json.dump(meta, open(os.path.join(a.out, "bundle.json"), "w"), indent=2)
    print(f"{a.out}: {len(rest)} train = database, {nq} validation queries")


if __name__ == "__main__":
    main()
