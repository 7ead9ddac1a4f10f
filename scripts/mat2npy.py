#!/usr/bin/env python3
"""Dump variables of a MATLAB .mat file (v5/v7 or v7.3/HDF5) to .npy files.

Used by `cmh data convert` (the Rust side embeds this file with include_str! and runs it with the
project venv's python), and usable on its own:

    mat2npy.py FILE.mat                 # list the variables as JSON on stdout
    mat2npy.py FILE.mat OUTDIR KEY...   # dump the KEYs that exist to OUTDIR, with OUTDIR/index.json
    mat2npy.py --request REQUEST.json   # what cmh sends: see run_request below

Every array is written in MATLAB's orientation (the shape `size(x)` shows in MATLAB):
- v5/v7 files are read with scipy.io.loadmat, which already returns that orientation;
- v7.3 files are HDF5, which stores MATLAB's column-major arrays with the axes reversed (an N x d
  MATLAB matrix reads as d x N in h5py, an H x W x 3 x N image stack as N x 3 x W x H), so every
  dataset of a MATLAB-written file is transposed back (all axes reversed). A plain HDF5 file
  written by h5py (no "MATLAB 7.3" header and no MATLAB_class attributes) is kept as stored.
Struct fields are addressed as `struct.field` (e.g. `param.indexTest`). Sparse matrices are
written dense. Char, cell and complex arrays are refused.

index.json (FILE.mat OUTDIR KEY... mode): {"format": "v5"|"v7.3"|"hdf5", "transposed": bool,
             "variables": {name: {"shape": [...], "class": str}},
             "dumped": {key: {"file": "k0.npy", "shape": [...], "dtype": str}}}
Requested keys that do not exist are simply absent from "dumped" (the caller names them in its
error together with "variables").

Exit status: 0 ok; 1 unreadable file or unsupported variable (message on stderr); 2 a needed
Python package (scipy for v5, h5py for v7.3, numpy) is missing.
"""
import importlib
import json
import os
import sys


def fail(msg, code=1):
    sys.stderr.write("mat2npy: " + msg + "\n")
    sys.exit(code)


try:
    import numpy as np
except ImportError:
    fail("the Python package numpy is missing; install it with `%s -m pip install numpy`" % sys.executable, 2)


def need(module, why):
    try:
        return importlib.import_module(module)
    except ImportError:
        fail("the Python package %s is needed %s; install it with `%s -m pip install %s`"
             % (module, why, sys.executable, module), 2)


def is_hdf5(path):
    # HDF5 signature at offset 0, 512, 1024, ... (MATLAB v7.3 uses a 512-byte user block).
    sig = b"\x89HDF\r\n\x1a\n"
    with open(path, "rb") as f:
        for off in (0, 512, 1024, 2048):
            f.seek(off)
            if f.read(8) == sig:
                return True
    return False


def little_endian(a):
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def check_array(a, key, path):
    if a.dtype == object:
        fail("%s: variable %s is a cell array or struct, not a numeric array" % (path, key))
    if a.dtype.kind in ("U", "S"):
        fail("%s: variable %s is a char array, not a numeric array" % (path, key))
    if a.dtype.kind == "c":
        fail("%s: variable %s is complex; only real arrays are supported" % (path, key))
    if a.dtype.kind not in ("b", "i", "u", "f"):
        fail("%s: variable %s has unsupported type %s" % (path, key, a.dtype))
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    return little_endian(a)


# ---------------------------------------------------------------- v5 / v7 (scipy)

def v5_list(path):
    sio = need("scipy.io", "to read MATLAB v5/v7 files (%s)" % path)
    out = {}
    for name, shape, cls in sio.whosmat(path):
        out[name] = {"shape": list(shape), "class": cls}
    return out


def v5_get(data, key, path):
    parts = key.split(".")
    if parts[0] not in data:
        return None
    v = data[parts[0]]
    for p in parts[1:]:
        # A MATLAB struct loads as a structured array (1 x 1 for a scalar struct).
        if not isinstance(v, np.ndarray) or v.dtype.names is None or p not in v.dtype.names:
            return None
        if v.size != 1:
            fail("%s: %s is a struct array of size %s; only scalar structs are supported" % (path, key, v.shape))
        v = v.reshape(-1)[0][p]
    sp = sys.modules.get("scipy.sparse")
    if sp is not None and sp.issparse(v):
        v = v.toarray()
    v = np.asarray(v)
    return check_array(v, key, path)


def v5_dump(path, keys):
    sio = need("scipy.io", "to read MATLAB v5/v7 files (%s)" % path)
    need("scipy.sparse", "to read MATLAB v5/v7 files (%s)" % path)
    variables = v5_list(path)
    tops = sorted({k.split(".")[0] for k in keys if k.split(".")[0] in variables})
    data = sio.loadmat(path, variable_names=tops, squeeze_me=False, struct_as_record=True) if tops else {}
    got = {}
    for k in keys:
        a = v5_get(data, k, path)
        if a is not None:
            got[k] = a
    return "v5", False, variables, got


# ---------------------------------------------------------------- v7.3 (h5py)

def attr_str(obj, name):
    v = obj.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("ascii", "replace")
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else b""
        return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    return str(v)


def h5_is_matlab(path, f):
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return True
    return any(attr_str(f[k], "MATLAB_class") is not None for k in f.keys())


def h5_read(f, obj, key, path, matlab):
    h5py = sys.modules["h5py"]
    cls = attr_str(obj, "MATLAB_class")
    if isinstance(obj, h5py.Group):
        if obj.attrs.get("MATLAB_sparse") is not None:
            nrows = int(np.asarray(obj.attrs["MATLAB_sparse"]).reshape(-1)[0])
            jc = np.asarray(obj["jc"][()]).reshape(-1).astype(np.int64)
            ncols = len(jc) - 1
            ir = np.asarray(obj["ir"][()]).reshape(-1).astype(np.int64) if "ir" in obj else np.zeros(0, np.int64)
            if "data" in obj:
                vals = np.asarray(obj["data"][()]).reshape(-1)
            else:
                vals = np.ones(len(ir), dtype=np.uint8)
            if cls == "logical":
                vals = vals.astype(bool)
            dense = np.zeros((nrows, ncols), dtype=vals.dtype)
            cols = np.repeat(np.arange(ncols), np.diff(jc))
            dense[ir, cols] = vals
            return check_array(dense, key, path)
        fail("%s: %s is a struct (fields: %s), not an array; name a field as %s.FIELD"
             % (path, key, ", ".join(sorted(obj.keys())), key))
    if cls == "cell" or obj.dtype == object or obj.dtype.kind == "O":
        fail("%s: variable %s is a cell array, not a numeric array" % (path, key))
    if cls == "char":
        fail("%s: variable %s is a char array, not a numeric array" % (path, key))
    if obj.attrs.get("MATLAB_empty") is not None and int(np.asarray(obj.attrs["MATLAB_empty"]).reshape(-1)[0]):
        dims = np.asarray(obj[()]).reshape(-1).astype(np.int64)
        a = np.zeros(tuple(int(d) for d in dims), dtype=np.float64)
        return a
    if obj.dtype.names is not None:
        if set(obj.dtype.names) == {"real", "imag"}:
            fail("%s: variable %s is complex; only real arrays are supported" % (path, key))
        fail("%s: variable %s has a compound type %s" % (path, key, obj.dtype))
    a = obj[()]
    a = np.asarray(a)
    if matlab:
        a = a.T  # MATLAB column-major -> MATLAB orientation (a view; np.save writes it Fortran-ordered)
    if cls == "logical":
        a = a.astype(bool)
    return check_array(a, key, path)


def h5_list(f, matlab):
    h5py = sys.modules["h5py"]
    out = {}

    def shape_of(ds):
        s = list(ds.shape)
        return s[::-1] if matlab else s

    for name in f.keys():
        if name.startswith("#"):  # MATLAB's #refs# / #subsystem# groups
            continue
        obj = f[name]
        cls = attr_str(obj, "MATLAB_class")
        if isinstance(obj, h5py.Group):
            if obj.attrs.get("MATLAB_sparse") is not None:
                nrows = int(np.asarray(obj.attrs["MATLAB_sparse"]).reshape(-1)[0])
                out[name] = {"shape": [nrows, len(obj["jc"]) - 1], "class": (cls or "double") + " (sparse)"}
            else:
                out[name] = {"shape": [], "class": "struct"}
                for field in obj.keys():
                    sub = obj[field]
                    if isinstance(sub, h5py.Dataset):
                        out[name + "." + field] = {"shape": shape_of(sub), "class": attr_str(sub, "MATLAB_class") or str(sub.dtype)}
        else:
            out[name] = {"shape": shape_of(obj), "class": cls or str(obj.dtype)}
    return out


def h5_dump(path, keys):
    h5py = need("h5py", "to read MATLAB v7.3 (HDF5) files (%s)" % path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail("%s: cannot open as HDF5 (%s)" % (path, e))
    with f:
        matlab = h5_is_matlab(path, f)
        variables = h5_list(f, matlab)
        got = {}
        for k in keys:
            hk = k.replace(".", "/")
            if hk not in f:
                continue
            got[k] = h5_read(f, f[hk], k, path, matlab)
    return ("v7.3" if matlab else "hdf5"), matlab, variables, got


# ---------------------------------------------------------------- main

def read_file(path, keys):
    """(format, transposed, variables, {key: array}) for the keys of `path` that exist."""
    if not os.path.isfile(path):
        fail("%s: no such file" % path)
    try:
        return (h5_dump if is_hdf5(path) else v5_dump)(path, keys)
    except SystemExit:
        raise
    except NotImplementedError as e:
        fail("%s: %s" % (path, e))
    except Exception as e:  # scipy's and h5py's errors for truncated or foreign files
        fail("%s: cannot read as a MATLAB file (%s: %s)" % (path, type(e).__name__, e))


def save(out, fname, a):
    np.save(os.path.join(out, fname), a, allow_pickle=False)
    return {"file": fname, "shape": list(a.shape), "dtype": str(a.dtype)}


def run_request(req_path):
    """The request `cmh data convert` sends: pick each role's variable and dump it.

    {"files": [path, ...], "out": dir,
     "roles": {role: [[key, file_index or null], ...]}}   candidates in order of preference
    A role takes the first candidate key found (in the given file, or in any file); when that key
    is in several files, the role is reported as ambiguous instead. Writes out/index.json:
    {"files": [{"path", "format", "transposed", "variables"}],
     "roles": {role: {"file": i, "key": k, "npy": f, "shape": [...], "dtype": str}},
     "ambiguous": {role: {"key": k, "files": [i, ...]}}}
    """
    with open(req_path) as fh:
        req = json.load(fh)
    files, out, roles = req["files"], req["out"], req["roles"]
    os.makedirs(out, exist_ok=True)
    listing = [read_file(p, []) for p in files]
    variables = [l[2] for l in listing]
    chosen, ambiguous = {}, {}
    for role, cands in roles.items():
        for key, fi in cands:
            where = [i for i in range(len(files)) if (fi is None or fi == i) and key in variables[i]]
            if len(where) == 1:
                chosen[role] = (where[0], key)
                break
            if len(where) > 1:
                ambiguous[role] = {"key": key, "files": where}
                break
    done = {}
    for i, p in enumerate(files):
        keys = sorted({k for (fi, k) in chosen.values() if fi == i})
        if not keys:
            continue
        _, _, _, got = read_file(p, keys)
        for role, (fi, k) in chosen.items():
            if fi == i and k in got:
                info = save(out, "role_%s.npy" % role, got[k])
                info.update({"file_index": i, "key": k})
                done[role] = info
    index = {
        "files": [{"path": p, "format": l[0], "transposed": l[1], "variables": l[2]} for p, l in zip(files, listing)],
        "roles": done,
        "ambiguous": ambiguous,
    }
    with open(os.path.join(out, "index.json"), "w") as fh:
        json.dump(index, fh)
    return 0


def main(argv):
    if len(argv) < 1 or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0 if argv else 1
    if argv[0] == "--request":
        if len(argv) != 2:
            fail("usage: mat2npy.py --request REQUEST.json")
        return run_request(argv[1])
    path = argv[0]
    if len(argv) == 1:
        _, _, variables, _ = read_file(path, [])
        json.dump(variables, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    out, keys = argv[1], argv[2:]
    os.makedirs(out, exist_ok=True)
    fmt, transposed, variables, got = read_file(path, keys)
    dumped = {}
    for i, (k, a) in enumerate(got.items()):
        dumped[k] = save(out, "k%d.npy" % i, a)
    with open(os.path.join(out, "index.json"), "w") as fh:
        json.dump({"format": fmt, "transposed": transposed, "variables": variables, "dumped": dumped}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
