#!/usr/bin/env python3
"""Encodes items with an exported SCH / CCA-ITQ model using numpy only, and checks the codes
against the ones cmh wrote. The recipe is the one a Python user copies:

    phi_t = exp(-||x - m{t}_anchors||^2 / (2 sigma[t]^2)) - m{t}_phi_mean
    SCH:      codes = sign(phi_t @ m{t}_W @ R)        CCA-ITQ: codes = sign(phi_t @ m{t}_proj)
    sign(0) = +1

usage: .venv/bin/python scripts/check_shallow_export.py MODEL_DIR [MODEL_DIR ...]
  MODEL_DIR as written by `cargo bench --bench shallow_study -- --save-dir DIR` (holds
  query_features_m{t}.npy and query_codes_m{t}.npy besides the model).
"""
import json
import os
import sys

import numpy as np


def encode(d, t, x):
    m = json.load(open(os.path.join(d, "model.json")))
    a = np.load(os.path.join(d, f"m{t}_anchors.npy"))
    mean = np.load(os.path.join(d, f"m{t}_phi_mean.npy"))
    s = m["sigma"][t]
    x = x.astype(np.float64)
    d2 = np.maximum((x * x).sum(1)[:, None] + (a * a).sum(1)[None] - 2 * x @ a.T, 0)
    phi = np.exp(-d2 / (2 * s * s)) - mean
    if m["method"] == "sch":
        h = phi @ np.load(os.path.join(d, f"m{t}_W.npy")) @ np.load(os.path.join(d, "R.npy"))
    else:
        h = phi @ np.load(os.path.join(d, f"m{t}_proj.npy"))
    return np.where(h >= 0, 1, -1).astype(np.int8), h


def main():
    bad = 0
    for d in sys.argv[1:]:
        for t in (0, 1):
            x = np.load(os.path.join(d, f"query_features_m{t}.npy"))
            ours, h = encode(d, t, x)
            rust = np.load(os.path.join(d, f"query_codes_m{t}.npy"))
            packed = np.load(os.path.join(d, f"query_codes_m{t}_packed.npy"))
            assert (np.unpackbits(packed, axis=1)[:, : rust.shape[1]] == (rust > 0)).all(), "packed != int8"
            diff = ours != rust
            # A sign can only differ where |h| is at rounding level.
            tiny = np.abs(h) < 1e-9
            n_bad = int((diff & ~tiny).sum())
            print(f"{d} modality {t}: {rust.shape[0]} x {rust.shape[1]} codes, {int(diff.sum())} bits differ "
                  f"({n_bad} not at a rounding-level tie)")
            bad += n_bad
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
