#!/usr/bin/env python3
"""Encode new items with a saved cmh SDCH model (feature mode), with numpy only.

    .venv/bin/python scripts/sdch_encode.py MODEL_DIR FEATURES.npy --side txt --out codes.npy

MODEL_DIR is what `SdchModel::save` wrote (model.json, weights.safetensors). --side img encodes
image feature vectors, --side txt bag-of-words / text features. Writes int8 +-1 codes (n x bits),
the layout of cmh's code files; `np.packbits(codes > 0, axis=1)` gives the packed form.
The network: standardise with the stored training mean / deviation, the MLP {side}-fc1, ...
(ReLU between layers), then the shared hash layer fc4, then the sign (0 -> +1).
"""
import argparse
import json
import os
import struct

import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "I8": "i1"}


def load_safetensors(path):
    """The safetensors layout: u64 header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def hash_layer(w, x, side):
    """The real-valued output z of the hash layer fc4 (n x bits), and the input h of fc4."""
    h = (x - w[f"{side}-input.mean"]) / w[f"{side}-input.std"]
    i = 1
    while f"{side}-fc{i}.weight" in w:
        h = h @ w[f"{side}-fc{i}.weight"].T + w[f"{side}-fc{i}.bias"]
        i += 1
        if f"{side}-fc{i}.weight" in w:
            h = np.maximum(h, 0)
    return h @ w["fc4.weight"].T + w["fc4.bias"], h


def encode(w, x, side):
    z, _ = hash_layer(w, x, side)
    return np.where(z >= 0, 1, -1).astype(np.int8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("features")
    ap.add_argument("--side", choices=["img", "txt"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.model_dir, "model.json")))
    if meta.get("method") != "sdch":
        raise SystemExit(f"{args.model_dir}: not an SDCH model")
    if args.side == "img" and meta["arch"]["image"]["kind"] != "features":
        raise SystemExit("this model's image network is AlexNet (raw images); encode images with cmh")
    w = load_safetensors(os.path.join(args.model_dir, "weights.safetensors"))
    x = np.load(args.features).astype(np.float64)
    np.save(args.out, encode(w, x, args.side))


if __name__ == "__main__":
    main()
