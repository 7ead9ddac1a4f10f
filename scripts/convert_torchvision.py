#!/usr/bin/env python3
"""Convert a torchvision checkpoint (a torch.save'd state_dict, e.g. alexnet-owt-7be5be79.pth) to
safetensors, which cmh (and any language) reads without pickle.

    .venv/bin/python scripts/convert_torchvision.py pretrained/alexnet-owt-7be5be79.pth
    -> pretrained/alexnet-owt-<sha256 prefix of the new file>.safetensors

Like torch.hub, the SHA-256 prefix in the input's name (the part after the last '-') is verified
first. The output name carries the new file's own SHA-256 prefix, so cmh verifies it on load.
The file is written with the plain safetensors layout (8-byte little-endian header length, JSON
header, raw little-endian tensor data), needing only torch and numpy.
"""
import argparse
import hashlib
import json
import os
import re
import struct
import sys
import tempfile

import numpy as np
import torch

DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_prefix(path):
    """The last '-'-separated part of the file stem when it is 8-64 lowercase hex digits."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if "-" not in stem:
        return None
    tail = stem.rsplit("-", 1)[1]
    return tail if 8 <= len(tail) <= 64 and re.fullmatch(r"[0-9a-f]+", tail) else None


def load_state_dict(path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        sys.exit(f"{path}: not a state_dict (a dict of tensors)")
    return obj


def write_safetensors(tensors, path, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in DTYPES:
            sys.exit(f"tensor {name}: dtype {t.dtype} is not supported")
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="torchvision .pth checkpoint (state_dict)")
    ap.add_argument("--out", help="output .safetensors (default: beside the input, named with its own hash prefix)")
    args = ap.parse_args()

    digest = sha256(args.input)
    prefix = hash_prefix(args.input)
    if prefix and not digest.startswith(prefix):
        sys.exit(f"{args.input}: SHA-256 is {digest}, but the name says it starts with {prefix}: corrupt or incomplete download")
    sd = load_state_dict(args.input)
    meta = {"source": os.path.basename(args.input), "source_sha256": digest, "converter": "cmh scripts/convert_torchvision.py"}

    out_dir = os.path.dirname(os.path.abspath(args.out or args.input))
    fd, tmp = tempfile.mkstemp(suffix=".safetensors.tmp", dir=out_dir)
    os.close(fd)
    try:
        write_safetensors(sd, tmp, meta)
        if args.out:
            out = args.out
        else:
            stem = os.path.splitext(os.path.basename(args.input))[0]
            if prefix:
                stem = stem[: -(len(prefix) + 1)]
            out = os.path.join(out_dir, f"{stem}-{sha256(tmp)[:8]}.safetensors")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(out)


if __name__ == "__main__":
    main()
