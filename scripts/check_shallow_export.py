#!/usr/bin/env python3
"""Encodes items with exported SCH / CCA-ITQ / SeGH models in numpy (cmh_tools.load_model in
python/) and checks the codes against the ones cmh wrote.

usage: .venv/bin/python scripts/check_shallow_export.py MODEL_DIR [MODEL_DIR ...]
  MODEL_DIR as written by `cargo bench --bench shallow_study -- --save-dir DIR` (holds
  query_features_m{t}.npy and query_codes_m{t}.npy besides the model). Exit status 1 when a bit
  differs anywhere but at a rounding-level tie.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import cmh_tools  # noqa: E402


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    bad = 0
    for d in sys.argv[1:]:
        model = cmh_tools.load_model(d)
        for t in (0, 1):
            x = np.load(os.path.join(d, f"query_features_m{t}.npy"))
            h, scale = model.project(t, x, with_scale=True)
            rust = cmh_tools.load_codes(os.path.join(d, f"query_codes_m{t}.npy"))
            diff = np.where(h >= 0, 1, -1) != rust
            n_bad = int((diff & (np.abs(h) > model.tie_tolerance * scale)).sum())
            print(f"{d} modality {t}: {rust.shape[0]} x {rust.shape[1]} codes, {int(diff.sum())} bits differ "
                  f"({n_bad} not at a rounding-level tie)")
            bad += n_bad
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
