#!/usr/bin/env python3
"""Dump the Wikipedia benchmark (Rasiwasia et al. 2010: raw_features.mat + the .list files) to
plain .npy files for cmh's SDCH study and benchmark (benches/sdch_wiki.rs):

    .venv/bin/python scripts/wiki_npy.py ../shared/data/wiki/raw_features_rasiwasia OUT_DIR

OUT_DIR gets I_tr / I_te (float32, 128-d SIFT bag of visual words), T_tr / T_te (float32, 10-d
LDA topic proportions), L_tr / L_te (uint8 one-hot, 10 classes): the standard 2173 / 693 split.
"""
import os
import sys

import numpy as np
import scipy.io


def labels(path):
    rows = [line.split("\t") for line in open(path).read().splitlines() if line.strip()]
    cls = np.array([int(r[2]) - 1 for r in rows])
    out = np.zeros((len(cls), 10), dtype=np.uint8)
    out[np.arange(len(cls)), cls] = 1
    return out


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    m = scipy.io.loadmat(os.path.join(src, "raw_features.mat"))
    for k in ("I_tr", "I_te", "T_tr", "T_te"):
        np.save(os.path.join(out, k + ".npy"), np.asarray(m[k], dtype=np.float32))
    np.save(os.path.join(out, "L_tr.npy"), labels(os.path.join(src, "trainset_txt_img_cat.list")))
    np.save(os.path.join(out, "L_te.npy"), labels(os.path.join(src, "testset_txt_img_cat.list")))
    for k in ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te"):
        print(k, np.load(os.path.join(out, k + ".npy")).shape)


if __name__ == "__main__":
    main()
