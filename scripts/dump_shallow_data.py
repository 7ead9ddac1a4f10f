#!/usr/bin/env python3
"""Dumps the Wikipedia and UCI-digits benchmark arrays to plain .npy files for the shallow-method
study (benches/shallow_study.rs) until the bundle converter covers them.

usage: .venv/bin/python scripts/dump_shallow_data.py [SHARED_DATA_DIR] [OUT_DIR]
  defaults: the first of ../shared/data, ../../shared/data that exists; data/raw
writes OUT_DIR/{wiki,uci}/{I_tr,I_te,T_tr,T_te}.npy (float64, rows = items) and
{L_tr,L_te}.npy (uint8 one-hot, n x 10).
- wiki: raw_features_rasiwasia/raw_features.mat + trainset/testset_txt_img_cat.list (labels 1..10;
  row i of the list = row i of I_*/T_*), standard split 2173 train / 693 test.
- uci: uci_all.mat (I = 76-d Fourier, T = 64-d Karhunen-Loeve, L = 1..10), split 1500 / 500.
"""
import os
import sys

import numpy as np
import scipy.io


def one_hot(idx, c=10):
    idx = np.asarray(idx, dtype=np.int64).ravel()
    if idx.min() < 1 or idx.max() > c:
        raise SystemExit(f"labels must be 1..{c}, found {idx.min()}..{idx.max()}")
    out = np.zeros((idx.size, c), dtype=np.uint8)
    out[np.arange(idx.size), idx - 1] = 1
    return out


def save(out, name, arrays):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for k, v in arrays.items():
        np.save(os.path.join(d, k + ".npy"), v)
    print(name, {k: (v.shape, str(v.dtype)) for k, v in arrays.items()})


def main():
    if len(sys.argv) > 1:
        shared = sys.argv[1]
    else:
        cands = ["../shared/data", "../../shared/data"]
        shared = next((c for c in cands if os.path.isdir(c)), None)
        if shared is None:
            raise SystemExit(f"no shared data folder among {cands}; pass it as the first argument")
    out = sys.argv[2] if len(sys.argv) > 2 else "data/raw"
    wdir = os.path.join(shared, "wiki", "raw_features_rasiwasia")
    m = scipy.io.loadmat(os.path.join(wdir, "raw_features.mat"))

    def labels(listfile):
        rows = [ln.rstrip("\n").split("\t") for ln in open(os.path.join(wdir, listfile)) if ln.strip()]
        return one_hot([int(r[2]) for r in rows])

    w = {k: np.ascontiguousarray(m[k], dtype=np.float64) for k in ("I_tr", "I_te", "T_tr", "T_te")}
    w["L_tr"] = labels("trainset_txt_img_cat.list")
    w["L_te"] = labels("testset_txt_img_cat.list")
    assert w["I_tr"].shape == (2173, 128) and w["T_te"].shape == (693, 10)
    assert w["L_tr"].shape[0] == 2173 and w["L_te"].shape[0] == 693
    save(out, "wiki", w)

    u = scipy.io.loadmat(os.path.join(shared, "uci_digits", "uci_all.mat"))
    d = {k: np.ascontiguousarray(u[k], dtype=np.float64) for k in ("I_tr", "I_te", "T_tr", "T_te")}
    d["L_tr"] = one_hot(u["L_tr"])
    d["L_te"] = one_hot(u["L_te"])
    assert d["I_tr"].shape == (1500, 76) and d["T_te"].shape == (500, 64)
    save(out, "uci", d)


if __name__ == "__main__":
    main()
