#!/usr/bin/env python3
"""Analyse the binary codes a cmh run exported, with numpy only.

    .venv/bin/python scripts/analyze_codes.py RUN_DIR [--data BUNDLE] [--tol 1e-9] [--no-encode]

RUN_DIR is any folder cmh wrote: one run (`bitsB-seedS/`), a `cmh train ... --out RUN` folder
(one `bitsB-seedS/` per code length and seed), or a `cmh demo --out DIR` report folder
(`DIR/<protocol>/<method>/bitsB-seedS/`). Every run folder below RUN_DIR is analysed. A run folder
holds (see README "Codes and files"):

    query_image.npy, query_text.npy    int8 +-1 codes of the query items (n x bits)
    db_image.npy, db_text.npy          int8 +-1 codes of the database items, encoded by the hash functions
    train_B.npy                        learned unified codes B of the training items (when the method
                                       learns B and the database is the training set)
    *_packed.npy                       the same codes as numpy.packbits(codes > 0, axis=1)
    query_labels.npy, db_labels.npy    uint8 label rows (n x classes)
    split_query.npy, split_database.npy, split_train.npy   item indices into the bundle
    report.json                        what cmh measured
    model/                             the learned model (model.json + .npy / .safetensors matrices)

For each run it
  1. recomputes mAP (and mAP@k when the report has k) image->text and text->image, under both
     database conventions, with the README's "Evaluation conventions" written out plainly below,
     and compares them with report.json: any difference above --tol is a failure (exit status 1);
  2. prints bit balance, bit correlation and code-collision statistics of the database codes;
  3. encodes the query and database items again from the bundle's features with the exported
     hash-function matrices (SCH, CCA-ITQ, SeGH; SDCH through scripts/sdch_encode.py) and checks
     the result equals the exported codes (a bit may only differ where the projection is a
     rounding-level tie). The `encode_*` functions are the recipe to copy for new items.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdch_encode  # noqa: E402  (numpy-only SDCH encoder, same folder)


# ------------------------------------------------------------------------------------------------
# Evaluation (README "Evaluation conventions"), written for clarity rather than speed.

def hamming(q, db):
    """Hamming distances between +-1 codes: d = (bits - <q, db>) / 2 (exact in int64)."""
    bits = q.shape[1]
    return (bits - q.astype(np.int64) @ db.astype(np.int64).T) // 2


def mean_average_precision(q, db, q_labels, db_labels, k=None):
    """mAP over the full ranking and, with k, mAP@k. Returns (map, map_at_k or None, excluded).

    - relevance: query and database item share at least one label;
    - ranking: by (Hamming distance, database index), no random tie-breaking;
    - AP = (1/R) sum of P@r over the relevant positions r, R = relevant items in the database;
    - AP@k = (1/R_k) sum over relevant positions r <= k of P@r, R_k = relevant items in the top k,
      0 when the top k holds none (DCMH's calc_map_k);
    - queries with no relevant database item (R = 0) are excluded from both means and counted.
    """
    relevant = (q_labels.astype(np.int64) @ db_labels.astype(np.int64).T) > 0
    return map_from_distances(hamming(q, db), relevant, k)


def map_from_distances(dist, relevant, k=None):
    """mean_average_precision for any distances: dist and relevant (bool) are n_query x n_db; every
    ranking is by (distance, database index). Returns (map, map_at_k or None, excluded)."""
    n_db = dist.shape[1]
    positions = np.arange(1, n_db + 1)
    aps, apks, excluded = [], [], 0
    for i in range(dist.shape[0]):
        # lexsort sorts by the last key first: distance, then database index.
        order = np.lexsort((np.arange(n_db), dist[i]))
        rel = relevant[i, order]
        if not rel.any():
            excluded += 1
            continue
        precision = np.cumsum(rel) / positions          # P@r for every rank r
        aps.append(precision[rel].sum() / rel.sum())
        if k is not None:
            top = rel[:k]
            apks.append(precision[:k][top].sum() / top.sum() if top.any() else 0.0)
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return mean(aps), (mean(apks) if k is not None else None), excluded


# ------------------------------------------------------------------------------------------------
# Code statistics.

def code_statistics(codes):
    """Bit balance, bit correlation and code collisions of an n x bits matrix of +-1 codes."""
    c = codes.astype(np.float64)
    n, bits = c.shape
    balance = c.mean(axis=0)                  # per bit: 0 = half +1 / half -1, +-1 = constant bit
    std = c.std(axis=0)
    constant = std == 0
    live = ~constant
    if live.sum() >= 2:
        corr = np.corrcoef(c[:, live], rowvar=False)
        off = np.abs(corr[~np.eye(corr.shape[0], dtype=bool)])
        mean_corr, max_corr = float(off.mean()), float(off.max())
    else:
        mean_corr = max_corr = float("nan")
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "n": n,
        "bits": bits,
        "mean_abs_balance": float(np.abs(balance).mean()),
        "max_abs_balance": float(np.abs(balance).max()),
        "constant_bits": int(constant.sum()),
        "mean_abs_corr": mean_corr,
        "max_abs_corr": max_corr,
        "distinct_codes": int(len(counts)),
        "largest_bucket": int(counts.max()),
        "items_sharing_a_code": int(counts[counts > 1].sum()),
    }


# ------------------------------------------------------------------------------------------------
# Encoding new items with the exported hash functions (copy these). Each returns the real-valued
# projection h (n x bits) and a scale per entry; codes = where(h >= 0, +1, -1), sign(0) = +1.
# The scale (sum of absolute terms) tells a rounding-level tie, where numpy's and cmh's floating
# point may round to opposite signs.

def rbf_features(model_dir, t, sigma, x):
    """SCH and CCA-ITQ: phi = exp(-||x - anchor||^2 / (2 sigma^2)) - training mean, per anchor."""
    anchors = np.load(os.path.join(model_dir, f"m{t}_anchors.npy"))
    phi_mean = np.load(os.path.join(model_dir, f"m{t}_phi_mean.npy"))
    sq = (x * x).sum(1)[:, None] + (anchors * anchors).sum(1)[None, :] - 2.0 * x @ anchors.T
    return np.exp(-np.maximum(sq, 0.0) / (2.0 * sigma * sigma)) - phi_mean


def encode_sch(model_dir, meta, t, x):
    """SCH (eq. 26): b = sign(phi_t(x) W_t R)."""
    phi = rbf_features(model_dir, t, meta["sigma"][t], x)
    proj = np.load(os.path.join(model_dir, f"m{t}_W.npy")) @ np.load(os.path.join(model_dir, "R.npy"))
    return phi @ proj, np.abs(phi) @ np.abs(proj)


def encode_cca_itq(model_dir, meta, t, x):
    """CCA-ITQ: b = sign(phi_t(x) proj_t), proj_t = W_t diag(corr^p) R already multiplied out."""
    phi = rbf_features(model_dir, t, meta["sigma"][t], x)
    proj = np.load(os.path.join(model_dir, f"m{t}_proj.npy"))
    return phi @ proj, np.abs(phi) @ np.abs(proj)


def encode_segh(model_dir, meta, t, x):
    """SeGH: b = sign(P W_t (psi_t(x) - mean_t)), W_t from step 1 (eq. 7), P from step 2 (eq. 9);
    psi_t = the raw features, or the centred RBF features phi_t when the model has anchors."""
    if meta.get("sigma"):
        x = rbf_features(model_dir, t, meta["sigma"][t], x)
    xc = x - np.load(os.path.join(model_dir, f"mean_{t}.npy"))
    proj = np.load(os.path.join(model_dir, "P.npy")) @ np.load(os.path.join(model_dir, f"W_{t}.npy"))
    return xc @ proj.T, np.abs(xc) @ np.abs(proj.T)


def encode_sdch(model_dir, meta, t, x):
    """SDCH (feature mode): the MLP of modality t then the shared hash layer fc4, in float32 by cmh."""
    if t == 0 and meta["arch"]["image"]["kind"] != "features":
        return None
    w = {name: v.astype(np.float64) for name, v in sdch_encode.load_safetensors(os.path.join(model_dir, "weights.safetensors")).items()}
    side = "img" if t == 0 else "txt"
    z, h = sdch_encode.hash_layer(w, x, side)
    # cmh computes in float32: a sign may flip where |z| is within float32 rounding of 0.
    return z, np.abs(h) @ np.abs(w["fc4.weight"].T) + np.abs(w["fc4.bias"])


ENCODERS = {"sch": encode_sch, "cca-itq": encode_cca_itq, "segh": encode_segh, "sdch": encode_sdch}
# Relative size of a rounding-level tie: float64 methods and float32 (SDCH) ones.
TIE = {"sch": 1e-9, "cca-itq": 1e-9, "segh": 1e-9, "sdch": 1e-4}


def load_bundle_features(bundle_dir):
    manifest = json.load(open(os.path.join(bundle_dir, "bundle.json")))
    out = []
    for m in manifest["modalities"][:2]:
        if not m.get("features"):
            raise SystemExit(f"{bundle_dir}: modality {m['name']} has no feature file to encode from")
        # cmh reads features as float32 and computes in float64 (SDCH: float32).
        out.append(np.load(os.path.join(bundle_dir, m["features"])).astype(np.float32).astype(np.float64))
    return out


def find_bundle(run_dir, data):
    """The bundle a run was trained on (--data, else `data` in the run.json beside the run folder),
    and that run.json (the run's configuration; {} when absent)."""
    run_json = os.path.join(os.path.dirname(os.path.abspath(run_dir)), "run.json")
    cfg = json.load(open(run_json)) if os.path.isfile(run_json) else {}
    path = cfg.get("data", "")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for cand in ([data] if data else [path, os.path.join(os.path.dirname(run_json), path), os.path.join(repo, path)]):
        if cand and os.path.isfile(os.path.join(cand, "bundle.json")):
            return cand, cfg
    return None, cfg


# ------------------------------------------------------------------------------------------------

def load_codes(run, stem):
    """int8 +-1 codes, checked against their packbits twin."""
    codes = np.load(os.path.join(run, f"{stem}.npy"))
    packed = np.load(os.path.join(run, f"{stem}_packed.npy"))
    if not (np.unpackbits(packed, axis=1)[:, :codes.shape[1]] == (codes > 0)).all():
        raise SystemExit(f"{run}/{stem}_packed.npy does not hold the same codes as {stem}.npy")
    return codes


def check_run(run, args):
    """Analyses one run folder; returns the number of failures."""
    report = json.load(open(os.path.join(run, "report.json")))
    failures = 0
    result = {"method": report["method"], "bits": report["bits"], "map": {}, "stats": {}, "encode": {}}
    print(f"\n== {run}: {report['method']} {report['bits']} bits seed {report['seed']} "
          f"({report['protocol']}, database {report['database_convention']})")
    q = {"image": load_codes(run, "query_image"), "text": load_codes(run, "query_text")}
    db = {"image": load_codes(run, "db_image"), "text": load_codes(run, "db_text")}
    ql = np.load(os.path.join(run, "query_labels.npy"))
    dl = np.load(os.path.join(run, "db_labels.npy"))
    learned = report["database_convention"] == "learned-B"
    b = load_codes(run, "train_B") if learned else None

    # 1. mAP, both directions, both database conventions. Report keys: i2t / t2i under the run's
    #    convention (learned B as the database when it applies), i2t_encoded / t2i_encoded with the
    #    database encoded by the other modality's hash function.
    cases = [
        ("i2t_encoded", q["image"], db["text"]),
        ("t2i_encoded", q["text"], db["image"]),
        ("i2t", q["image"], b if learned else db["text"]),
        ("t2i", q["text"], b if learned else db["image"]),
    ]
    for key, qc, dc in cases:
        want = report[key]
        k = want.get("k")
        m, mk, excluded = mean_average_precision(qc, dc, ql, dl, k)
        line = f"  {key:<12} mAP {m:.6f} (report {want['map']:.6f})"
        bad = abs(m - want["map"]) > args.tol or excluded != want["excluded_queries"]
        if k is not None:
            line += f"  mAP@{k} {mk:.6f} (report {want['map@k']:.6f})"
            bad |= abs(mk - want["map@k"]) > args.tol
        print(line + ("  MISMATCH" if bad else "  ok"))
        failures += bad
        result["map"][key] = {"map": m, "map@k": mk, "k": k, "excluded_queries": excluded}
    top = report.get("map@k")
    if top:
        for d in ("i2t", "t2i"):
            if abs(top[d] - report[d]["map@k"]) > args.tol:
                print(f"  report map@k.{d} {top[d]} differs from {d}.map@k {report[d]['map@k']}  MISMATCH")
                failures += 1

    # 2. Code statistics of the database codes (and B).
    sets = [("db_image", db["image"]), ("db_text", db["text"])] + ([("train_B", b)] if learned else [])
    print(f"  {'codes':<9} {'n':>6} {'|balance|':>10} {'max':>6} {'const':>5} {'|corr|':>7} {'max':>6} {'distinct':>8} {'bucket':>6} {'shared':>6}")
    for name, c in sets:
        s = code_statistics(c)
        result["stats"][name] = s
        print(f"  {name:<9} {s['n']:>6} {s['mean_abs_balance']:>10.3f} {s['max_abs_balance']:>6.3f} {s['constant_bits']:>5} "
              f"{s['mean_abs_corr']:>7.3f} {s['max_abs_corr']:>6.3f} {s['distinct_codes']:>8} {s['largest_bucket']:>6} {s['items_sharing_a_code']:>6}")

    # 3. Encode the items again from the bundle's features with the exported matrices.
    if args.no_encode:
        return failures, result
    model_dir = os.path.join(run, "model")
    meta = json.load(open(os.path.join(model_dir, "model.json")))
    method = meta["method"]
    if method not in ENCODERS:
        print(f"  encode: {method} has no numpy recipe here (use `cmh encode --model {model_dir}`)")
        return failures, result
    bundle, cfg = find_bundle(run, args.data)
    if bundle is None:
        print("  encode: bundle not found (pass --data BUNDLE); encode check skipped")
        return failures, result
    features = load_bundle_features(bundle)
    for t, name in enumerate(("image", "text")):
        for part, exported in (("query", q[name]), ("db", db[name])):
            idx = np.load(os.path.join(run, f"split_{'query' if part == 'query' else 'database'}.npy"))
            res = ENCODERS[method](model_dir, meta, t, features[t][idx])
            if res is None:
                print(f"  encode {part}_{name}: image network is AlexNet on raw images; skipped")
                continue
            h, scale = res
            ours = np.where(h >= 0, 1, -1).astype(np.int8)
            differ = ours != exported
            ties = np.abs(h) <= TIE[method] * scale
            hard = int((differ & ~ties).sum())
            print(f"  encode {part}_{name:<5} {exported.shape[0]} x {exported.shape[1]}: "
                  f"{int(differ.sum())} bits differ, {hard} not at a rounding-level tie  {'MISMATCH' if hard else 'ok'}")
            failures += hard > 0
            result["encode"][f"{part}_{name}"] = {"bits_differ": int(differ.sum()), "not_at_a_tie": hard}
    return failures, result


def find_runs(root):
    runs = []
    for d, _, files in os.walk(root):
        if "report.json" in files and "query_image.npy" in files:
            runs.append(d)
    return sorted(runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", help="the bundle the run was trained on (default: from run.json)")
    ap.add_argument("--tol", type=float, default=1e-9, help="largest accepted difference from report.json")
    ap.add_argument("--no-encode", action="store_true", help="skip re-encoding items")
    ap.add_argument("--json", help="also write the recomputed figures and statistics to this JSON file")
    args = ap.parse_args()
    runs = find_runs(args.run_dir)
    if not runs:
        raise SystemExit(f"{args.run_dir}: no run folder (report.json + query_image.npy) found")
    print("Code statistics: |balance| = mean over bits of |mean of the bit's +-1 values| (0 = balanced), "
          "max = worst bit;\n  const = constant bits; |corr| = mean |Pearson correlation| between two "
          "different bits, max = worst pair;\n  distinct = distinct codes; bucket = largest group of items "
          "with one code; shared = items whose code another item has too.")
    failures, results = 0, {}
    for r in runs:
        f, res = check_run(r, args)
        failures += f
        results[os.path.relpath(r, args.run_dir)] = res
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "failures": failures}, f, indent=1)
    print(f"\n{len(runs)} runs analysed, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
