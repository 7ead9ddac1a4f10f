#!/usr/bin/env python3
"""How much unseen-class information each signal carries on Wikipedia's zero-shot protocol (b).

An analysis, not a method of cmh: numpy only, closed-form linear models on the same
centred RBF-anchor features that cmh's SCH and CCA-ITQ use. For each class split of protocol (b)
(two unseen classes; training = the seen classes' training rows; queries = the unseen classes'
query rows; database = the unseen classes' training rows) it scores, at BITS bits, mAP I→T / T→I:

- cca      : regularised CCA on the kernel features, ITQ, sign (what cmh's CCA-ITQ does; label-free)
- attr     : ridge regression of each modality's kernel features onto the item's class attribute
             vector (the MiniLM class-name embeddings, as CZHash and AgNet regress), codes = sign of a
             seeded Gaussian projection of the predictions (the best a hash of the predicted
             attributes alone can hope to keep is what the predictions keep)
- cca+attr : one code of BITS bits: CCA-ITQ codes of 3/4 BITS followed by 1/4 BITS of the attribute
             codes (does the attribute signal add to the label-free one?)
- proto    : no codes: items ranked by the predicted attributes' projection on the direction between
             the two UNSEEN classes' attribute vectors (the zero-shot signal of the class names, with
             the unseen classes' names known; an upper reference for what the attributes can tell)

The split seeds and unseen classes are read from a zeroshot_wiki JSON (`--runs`, field `unseen` of
the protocol-(b) runs), so the splits are exactly cmh's. Default: the validation roles
(data/wiki_npy_val, scripts/wiki_val_npy.py) and the validation references of
benches/zeroshot_val_refs_s4.json.

usage: .venv/bin/python scripts/zs_linear_probe.py [--npy data/wiki_npy_val]
           [--runs benches/zeroshot_val_refs_s4.json] [--bits 64] [--anchors 1000]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from cmh_tools import evaluate_distances, rbf_features  # noqa: E402
from cmh_tools.models import sq_distances  # noqa: E402


def average_precision_map(q, d, qy, dy):
    """mAP of ranking d's rows by Hamming distance (±1 codes) or |difference| (1-d scores) to q's
    (ties by database index); relevant = same class index."""
    if q.ndim == 1:
        dist = np.abs(q[:, None] - d[None, :])
    else:
        dist = 0.5 * (q.shape[1] - q @ d.T)
    return evaluate_distances(dist, qy[:, None] == dy[None, :])["map"]


def fit_rbf_features(x, rows, n_anchors, rng):
    """Centred RBF features to anchors drawn from `rows`, σ = mean row-to-anchor distance."""
    anchors = x[rng.choice(rows, min(n_anchors, len(rows)), replace=False)]
    sigma = np.sqrt(sq_distances(x[rows], anchors)).mean()
    phi = rbf_features(x, anchors, sigma, 0.0)
    return phi - phi[rows].mean(0)


def inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(w)) @ v.T


def cca(x, y, k, reg):
    n = len(x)
    cxx, cyy, cxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
    cxx += reg * np.trace(cxx) / len(cxx) * np.eye(len(cxx))
    cyy += reg * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
    wx, wy = inv_sqrt(cxx), inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(wx @ cxy @ wy)
    return wx @ u[:, :k] * s[:k] ** 2, wy @ vt.T[:, :k] * s[:k] ** 2


def itq(v, iters=50, seed=0):
    r, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((v.shape[1], v.shape[1])))
    for _ in range(iters):
        u, _, wt = np.linalg.svd(np.sign(v @ r).T @ v)
        r = (u @ wt).T
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npy", default="data/wiki_npy_val")
    ap.add_argument("--runs", default="benches/zeroshot_val_refs_s4.json")
    ap.add_argument("--emb", default="minilm.npy")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--anchors", type=int, default=1000)
    ap.add_argument("--reg", type=float, default=3e-3, help="CCA ridge (relative to the mean variance)")
    ap.add_argument("--ridge", type=float, default=0.1, help="attribute regression ridge")
    a = ap.parse_args()

    img = np.load(os.path.join(a.npy, "image.npy")).astype(np.float64)
    txt = np.load(os.path.join(a.npy, "text.npy")).astype(np.float64)
    y = np.load(os.path.join(a.npy, "labels.npy"))
    if y.ndim == 2:
        y = y.argmax(1)
    names = json.load(open(os.path.join(a.npy, "classes.json")))
    train, query = np.load(os.path.join(a.npy, "train.npy")), np.load(os.path.join(a.npy, "test.npy"))
    attrs = np.load(os.path.join(a.npy, a.emb)).astype(np.float64)
    attrs /= np.linalg.norm(attrs, axis=1, keepdims=True)
    splits = sorted({(r["seed"], tuple(r["unseen"])) for r in json.load(open(a.runs))["runs"] if r["protocol"] == "b"})
    if not splits:
        raise SystemExit(f"{a.runs}: no protocol-(b) runs with an `unseen` field")

    rows = {k: [] for k in ("cca", "attr", "cca+attr", "proto")}
    print(f"{'seed':>4} {'unseen':<24}" + "".join(f"{k:>16}" for k in rows))
    for seed, unseen in splits:
        un = [names.index(c) for c in unseen]
        tr = train[~np.isin(y[train], un)]
        q, db = query[np.isin(y[query], un)], train[np.isin(y[train], un)]
        rng = np.random.default_rng(seed)
        phi = [fit_rbf_features(img, tr, a.anchors, rng), fit_rbf_features(txt, tr, a.anchors, rng)]
        # label-free: CCA + ITQ
        px, py = cca(phi[0][tr], phi[1][tr], a.bits, a.reg)
        proj = [phi[0] @ px, phi[1] @ py]
        rot = itq(np.vstack([proj[0][tr], proj[1][tr]]))
        emb = {"cca": [p @ rot for p in proj]}
        # supervised: ridge onto the seen label's class attribute vector
        target = attrs[y[tr]]
        pred = [f @ np.linalg.solve(f[tr].T @ f[tr] + a.ridge * np.eye(f.shape[1]), f[tr].T @ target) for f in phi]
        gauss = np.random.default_rng(0).standard_normal((attrs.shape[1], a.bits))
        emb["attr"] = [p @ gauss for p in pred]
        # mixed code: CCA-ITQ at 3/4 of the bits, the attribute projection at the other 1/4
        kc = 3 * a.bits // 4
        pxc, pyc = cca(phi[0][tr], phi[1][tr], kc, a.reg)
        projc = [phi[0] @ pxc, phi[1] @ pyc]
        rotc = itq(np.vstack([projc[0][tr], projc[1][tr]]))
        emb["cca+attr"] = [np.hstack([projc[v] @ rotc, pred[v] @ gauss[:, : a.bits - kc]]) for v in range(2)]
        direction = attrs[un[0]] - attrs[un[1]]
        emb["proto"] = [p @ direction for p in pred]
        line = f"{seed:>4} {','.join(unseen):<24}"
        for k, (ei, et) in emb.items():
            code = (lambda m: m) if k == "proto" else np.sign
            i2t = average_precision_map(code(ei[q]), code(et[db]), y[q], y[db])
            t2i = average_precision_map(code(et[q]), code(ei[db]), y[q], y[db])
            rows[k].append((i2t, t2i))
            line += f"   {i2t:.4f}/{t2i:.4f}"
        print(line)
    print(f"{'mean':>4} {'':<24}" + "".join(f"   {np.mean(v, 0)[0]:.4f}/{np.mean(v, 0)[1]:.4f}" for v in rows.values()))
    print(f"{'avg':>4} {'(mean of both directions)':<24}" + "".join(f"{np.mean(v):>16.4f}" for v in rows.values()))


if __name__ == "__main__":
    main()
