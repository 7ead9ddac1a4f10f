#!/usr/bin/env python3
"""Write .npy arrays into a .mat file the way MATLAB's `save` does (test fixtures, exports).

    write_mat.py SPEC.json

SPEC.json holds one SPEC or a list of them (several files in one run):
SPEC: {"path": "out.mat", "format": "v5" | "v5z" | "v7.3" | "hdf5",
       "vars": {NAME: {"npy": "a.npy"}                      a numeric array
                      {"npy": "a.npy", "sparse": true}      a sparse matrix (2-d)
                      {"struct": {FIELD: {"npy": ...}, ...}} a scalar struct}}

The arrays are given in MATLAB's orientation (what `size(x)` shows in MATLAB: items in rows,
image stacks H x W x 3 x N).
- v5 / v5z: scipy.io.savemat (v5z compresses every variable, like MATLAB's default -v7).
- v7.3: HDF5 as MATLAB writes it: a 512-byte user block starting "MATLAB 7.3 MAT-file", every
  array stored with its axes reversed (MATLAB is column-major), a MATLAB_class attribute on each
  dataset ("double", "uint8", "logical", ...), structs as groups, sparse matrices as groups with
  data / ir / jc and a MATLAB_sparse attribute holding the row count.
- hdf5: a plain HDF5 file as h5py writes it from Python (no header, no attributes, axes as given).
"""
import json
import os
import sys
import time

import numpy as np

CLASSES = {
    "float64": "double", "float32": "single", "bool": "logical",
    "uint8": "uint8", "int8": "int8", "uint16": "uint16", "int16": "int16",
    "uint32": "uint32", "int32": "int32", "uint64": "uint64", "int64": "int64",
}


def load(spec, base):
    return np.load(os.path.join(base, spec["npy"]) if not os.path.isabs(spec["npy"]) else spec["npy"])


def write_v5(path, variables, base, compress):
    import scipy.io
    import scipy.sparse

    def conv(spec):
        if "struct" in spec:
            return {k: conv(v) for k, v in spec["struct"].items()}
        a = load(spec, base)
        if spec.get("sparse"):
            return scipy.sparse.csc_matrix(a)
        return a

    scipy.io.savemat(path, {k: conv(v) for k, v in variables.items()}, do_compression=compress, oned_as="column")


def write_v73(path, variables, base, matlab):
    import h5py

    def put(group, name, spec):
        if "struct" in spec:
            g = group.create_group(name)
            if matlab:
                g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in spec["struct"].items():
                put(g, k, v)
            return
        a = load(spec, base)
        cls = CLASSES[str(a.dtype)]
        if spec.get("sparse"):
            assert matlab, "sparse matrices only in v7.3 files"
            import scipy.sparse
            m = scipy.sparse.csc_matrix(a)
            g = group.create_group(name)
            g.attrs["MATLAB_class"] = np.bytes_(cls)
            g.attrs["MATLAB_sparse"] = np.uint64(a.shape[0])
            g.create_dataset("data", data=m.data.astype(np.uint8) if cls == "logical" else m.data)
            g.create_dataset("ir", data=m.indices.astype(np.uint64))
            g.create_dataset("jc", data=m.indptr.astype(np.uint64))
            return
        if matlab:
            stored = np.ascontiguousarray(a.T)  # column-major: HDF5 sees the axes reversed
            if cls == "logical":
                stored = stored.astype(np.uint8)
            ds = group.create_dataset(name, data=stored)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
        else:
            group.create_dataset(name, data=a)

    with h5py.File(path, "w", userblock_size=512 if matlab else 0) as f:
        for k, v in variables.items():
            put(f, k, v)
    if matlab:
        text = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: %s HDF5 schema 1.00 ." % time.strftime("%a %b %d %H:%M:%S %Y")
        head = text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
        with open(path, "r+b") as fh:
            fh.write(head.ljust(512, b"\x00"))


def main(argv):
    if len(argv) != 1:
        sys.stderr.write(__doc__)
        return 1
    with open(argv[0]) as fh:
        specs = json.load(fh)
    base = os.path.dirname(os.path.abspath(argv[0]))
    for spec in specs if isinstance(specs, list) else [specs]:
        fmt = spec["format"]
        if fmt in ("v5", "v5z"):
            write_v5(spec["path"], spec["vars"], base, fmt == "v5z")
        elif fmt in ("v7.3", "hdf5"):
            write_v73(spec["path"], spec["vars"], base, fmt == "v7.3")
        else:
            sys.stderr.write("write_mat.py: unknown format %r\n" % fmt)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
