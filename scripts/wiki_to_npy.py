#!/usr/bin/env python3
"""Dumps the Wikipedia benchmark (Rasiwasia et al., ACM MM 2010) to plain .npy files for the
zero-shot measurement (benches/zeroshot_wiki.rs builds a cmh bundle from them).

Reads raw_features_rasiwasia/raw_features.mat (I_tr/I_te 128-word SIFT BoVW, T_tr/T_te 10-topic
LDA) and the .list files (labels 1..10, categories.list for the names). Writes into OUT:
  image.npy  float32 2866 x 128  (the 2173 training rows, then the 693 test rows)
  text.npy   float32 2866 x 10
  labels.npy int64   2866        (class index 0..9)
  train.npy / test.npy int64 row indices (0..2172 / 2173..2865), classes.json (names in order).

Usage: .venv/bin/python scripts/wiki_to_npy.py [--src ../shared/data/wiki] [--out data/wiki_npy]
"""
import argparse
import json
import os
import sys

import numpy as np
import scipy.io as sio


def read_list(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for k, r in enumerate(rows):
        if len(r) != 3:
            sys.exit(f"{path}: line {k + 1}: expected 3 tab-separated fields, found {len(r)}")
    return np.array([int(r[2]) for r in rows], dtype=np.int64) - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wiki"))
    ap.add_argument("--out", default="data/wiki_npy")
    a = ap.parse_args()
    raw = os.path.join(a.src, "raw_features_rasiwasia")
    mat = sio.loadmat(os.path.join(raw, "raw_features.mat"))
    img = np.concatenate([mat["I_tr"], mat["I_te"]]).astype(np.float32)
    txt = np.concatenate([mat["T_tr"], mat["T_te"]]).astype(np.float32)
    ytr = read_list(os.path.join(raw, "trainset_txt_img_cat.list"))
    yte = read_list(os.path.join(raw, "testset_txt_img_cat.list"))
    with open(os.path.join(raw, "categories.list")) as f:
        classes = [l.strip() for l in f if l.strip()]
    y = np.concatenate([ytr, yte])
    if len(y) != len(img) or len(y) != len(txt):
        sys.exit(f"row counts differ: {len(img)} images, {len(txt)} texts, {len(y)} labels")
    if y.min() < 0 or y.max() >= len(classes):
        sys.exit(f"labels outside 1..{len(classes)}")
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "image.npy"), img)
    np.save(os.path.join(a.out, "text.npy"), txt)
    np.save(os.path.join(a.out, "labels.npy"), y)
    np.save(os.path.join(a.out, "train.npy"), np.arange(len(ytr), dtype=np.int64))
    np.save(os.path.join(a.out, "test.npy"), np.arange(len(ytr), len(y), dtype=np.int64))
    with open(os.path.join(a.out, "classes.json"), "w") as f:
        json.dump(classes, f)
    print(f"wrote {a.out}: {len(y)} items ({len(ytr)} train, {len(yte)} test), classes {classes}")


if __name__ == "__main__":
    main()
