#!/usr/bin/env python3
"""Validation copy of data/wiki_npy for benches/zeroshot_wiki.rs, with the roles of a validation
bundle written by `cmh data split` (cmh's one implementation of the validation split: a
class-stratified 20 % of the 2,173 training items as queries, seed 12345).

OUT keeps the feature, label, class and MiniLM files of SRC (symlinked); its train.npy / test.npy
are the validation bundle's training (= database) and query items. Wikipedia's 693 test items are
never used. benches/zeroshot_wiki.rs then runs its protocols on OUT with `--npy OUT`: for split
seed s two of the ten classes are unseen, the methods train on the training rows of the eight seen
classes, the queries are the validation queries of the unseen classes and the database the
training rows of the unseen classes.

usage: target/release/cmh data split data/wiki --validation --out runs/wiki_val
       .venv/bin/python scripts/wiki_val_npy.py --val-bundle runs/wiki_val [--src data/wiki_npy] [--out data/wiki_npy_val]
"""
import argparse
import json
import os
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val-bundle", required=True, help="a bundle written by `cmh data split BUNDLE --validation`")
    ap.add_argument("--src", default="data/wiki_npy")
    ap.add_argument("--out", default="data/wiki_npy_val")
    a = ap.parse_args()
    src = os.path.abspath(a.src)
    meta = json.load(open(os.path.join(a.val_bundle, "bundle.json")))
    split = meta.get("split") or sys.exit(f"{a.val_bundle}/bundle.json: no split; write it with `cmh data split --validation`")
    train = np.load(os.path.join(a.val_bundle, split["train"]))
    query = np.load(os.path.join(a.val_bundle, split["query"]))
    # The two folders must hold the same items in the same order: compare the labels.
    labels = np.load(os.path.join(src, "labels.npy"))
    bundle_labels = np.load(os.path.join(a.val_bundle, meta["labels"]))
    if bundle_labels.shape[0] != labels.shape[0] or not np.array_equal(bundle_labels.argmax(1), labels.reshape(-1)):
        sys.exit(f"{a.val_bundle} and {src} do not hold the same items in the same order (labels differ)")
    os.makedirs(a.out, exist_ok=True)
    for f in ["image.npy", "text.npy", "labels.npy", "classes.json", "minilm.npy"]:
        dst = os.path.join(a.out, f)
        if os.path.lexists(dst):
            os.remove(dst)
        if os.path.exists(os.path.join(src, f)):
            os.symlink(os.path.join(src, f), dst)
    np.save(os.path.join(a.out, "train.npy"), np.sort(train).astype(np.int64))
    np.save(os.path.join(a.out, "test.npy"), np.sort(query).astype(np.int64))
    print(f"{a.out}: {len(train)} training = database rows, {len(query)} validation queries, from {a.val_bundle}")


if __name__ == "__main__":
    main()
