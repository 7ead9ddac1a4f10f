"""Export cmh codes to a Lance dataset (searchable with ``metric="hamming"``, flat or IVF_FLAT).

    python -m cmh_tools.lance_export --codes DB_packed.npy --out DB.lance \\
        [--labels labels.npy] [--bundle BUNDLE --rows split_database.npy]

Columns: ``id`` (int64, the row of the code file), ``code`` (``fixed_size_list<uint8>[bits/8]``,
numpy.packbits rows), and when given ``labels`` (``list<int32>``, the class indices set in each
row of the labels file or of the bundle's labels), ``classes`` (``list<string>``, their names, from
a bundle) and ``item`` (the bundle's per-item metadata from ``items.json`` as a JSON string, when
the bundle has one). ``--rows`` maps code rows to bundle items (default: row i is item i).

The writer lives in Python because Lance's Rust crate pulls in a very large dependency tree
(DataFusion, object-store clients) for one export; ``pylance`` ships it prebuilt. Only numpy is
imported at module load; pyarrow and lance are imported when a dataset is written or searched.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_codes(path, bits=None):
    """Packed uint8 codes (n x ceil(bits/8)); int8 +-1 and bool 0/1 files are packed here."""
    a = np.load(path, mmap_mode="r")
    if a.ndim != 2:
        raise ValueError(f"{path}: codes must be a 2-d array, found shape {a.shape}")
    if a.dtype == np.uint8:
        packed = a
        bits = bits or 8 * a.shape[1]
    elif a.dtype == np.int8:
        if not np.isin(a, (-1, 1)).all():
            raise ValueError(f"{path}: int8 codes must be +1 or -1")
        bits = a.shape[1]
        packed = np.packbits(a > 0, axis=1)
    elif a.dtype == np.bool_:
        bits = a.shape[1]
        packed = np.packbits(a, axis=1)
    else:
        raise ValueError(f"{path}: codes must be uint8 (numpy.packbits), int8 (+-1) or bool, found {a.dtype}")
    if bits % 8 != 0:
        raise ValueError(f"{path}: Lance's hamming distance works on whole bytes; the code length must be a multiple of 8, found {bits}")
    return packed, bits


def label_lists(labels, n, what):
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"{what}: expected {n} rows (one per code) of 0/1 labels, found shape {labels.shape}")
    return [np.flatnonzero(row).astype(np.int32).tolist() for row in labels]


def build_table(codes, labels=None, bundle=None, rows=None):
    """The pyarrow table written by `write_dataset` (see the module documentation)."""
    import pyarrow as pa

    n, stride = codes.shape
    flat = pa.array(np.ascontiguousarray(codes).reshape(-1), type=pa.uint8())
    cols = {"id": pa.array(np.arange(n, dtype=np.int64)), "code": pa.FixedSizeListArray.from_arrays(flat, stride)}
    classes = None
    items = None
    if bundle is not None:
        bundle = Path(bundle)
        manifest = json.loads((bundle / "bundle.json").read_text())
        classes = manifest.get("classes")
        idx = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(idx) != n:
            raise ValueError(f"--rows: {len(idx)} entries for {n} codes")
        n_items = manifest.get("n_items")
        if n_items is not None and (idx.min(initial=0) < 0 or idx.max(initial=-1) >= n_items):
            raise ValueError(f"--rows: entries must lie in 0..{n_items} (the bundle's items)")
        if labels is None and (bundle / "labels.npy").exists():
            labels = np.load(bundle / "labels.npy", mmap_mode="r")[idx]
        if (bundle / "items.json").exists():
            meta = json.loads((bundle / "items.json").read_text())
            items = [json.dumps(meta[i], ensure_ascii=False) for i in idx]
    if labels is not None:
        lists = label_lists(labels, n, "labels")
        cols["labels"] = pa.array(lists, type=pa.list_(pa.int32()))
        if classes is not None:
            cols["classes"] = pa.array([[classes[c] for c in l] for l in lists], type=pa.list_(pa.string()))
    if items is not None:
        cols["item"] = pa.array(items, type=pa.string())
    return pa.table(cols)


def write_dataset(out, codes, labels=None, bundle=None, rows=None, mode="create"):
    """Writes the Lance dataset at `out` (a local path or an object-store URI such as s3://...)."""
    import lance

    table = build_table(codes, labels=labels, bundle=bundle, rows=rows)
    return lance.write_dataset(table, str(out), mode=mode)


def search(dataset, query_codes, k):
    """Lance's nearest-neighbour search with metric="hamming": (ids, distances), k per query."""
    import lance

    ds = lance.dataset(str(dataset)) if not hasattr(dataset, "to_table") else dataset
    ids, dists = [], []
    for q in np.atleast_2d(query_codes):
        t = ds.to_table(columns=["id", "_distance"], nearest={"column": "code", "q": np.asarray(q, dtype=np.uint8), "k": k, "metric": "hamming"})
        ids.append(t.column("id").to_numpy())
        dists.append(t.column("_distance").to_numpy())
    return np.array(ids), np.array(dists)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cmh_tools.lance_export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codes", required=True, type=Path, help="codes .npy (uint8 packbits rows, int8 +-1 or bool)")
    ap.add_argument("--out", required=True, help="dataset to write (path or object-store URI)")
    ap.add_argument("--labels", type=Path, help="0/1 labels .npy (codes x classes)")
    ap.add_argument("--bundle", type=Path, help="cmh bundle whose labels, class names and items.json to attach")
    ap.add_argument("--rows", type=Path, help="int64 .npy: the bundle item of each code row (e.g. split_database.npy)")
    ap.add_argument("--bits", type=int, help="code length of packed files (default 8 x columns)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = ap.parse_args(argv)
    try:
        codes, bits = load_codes(args.codes, args.bits)
        labels = np.load(args.labels, mmap_mode="r") if args.labels else None
        rows = np.load(args.rows) if args.rows else None
        if rows is not None and args.bundle is None:
            raise ValueError("--rows needs --bundle")
        if not args.overwrite and "://" not in args.out and Path(args.out).exists():
            raise ValueError(f"{args.out} exists (pass --overwrite to replace it)")
        ds = write_dataset(args.out, codes, labels=labels, bundle=args.bundle, rows=rows,
                           mode="overwrite" if args.overwrite else "create")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {ds.count_rows()} codes of {bits} bits, columns {ds.schema.names}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
