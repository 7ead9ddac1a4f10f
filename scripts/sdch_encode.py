#!/usr/bin/env python3
"""Encode new items with a saved cmh SDCH model (feature mode), with numpy only.

    .venv/bin/python scripts/sdch_encode.py MODEL_DIR FEATURES.npy --side txt --out codes.npy

MODEL_DIR is what `SdchModel::save` wrote (model.json, weights.safetensors). --side img encodes
image feature vectors, --side txt bag-of-words / text features. Writes int8 +-1 codes (n x bits),
the layout of cmh's code files; `np.packbits(codes > 0, axis=1)` gives the packed form.
The network (cmh_tools.load_model in python/): standardise with the stored training mean /
deviation, the MLP {side}-fc1, ... (ReLU between layers), then the shared hash layer fc4, then the
sign (0 -> +1).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import cmh_tools  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("features")
    ap.add_argument("--side", choices=["img", "txt"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = cmh_tools.load_model(args.model_dir)
    if model.method != "sdch":
        raise SystemExit(f"{args.model_dir}: not an SDCH model")
    try:
        codes = model.encode("image" if args.side == "img" else "text", np.load(args.features))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    tmp = args.out + ".partial.npy"
    np.save(tmp, codes)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
