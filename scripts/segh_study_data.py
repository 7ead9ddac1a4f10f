#!/usr/bin/env python3
"""Dumps the Wikipedia and UCI-digits benchmarks to plain .npy files for the SeGH study
(`cargo bench --bench segh_study`), and optionally prints a numpy CCA-ITQ reference on the same
splits (a stand-in for cmh's own `cca-itq` until that lands).

Usage:
    .venv/bin/python scripts/segh_study_data.py [--shared ../shared] [--out target/segh_study] [--cca-itq]

Files written, per data set D in {wiki, uci}: D_I_tr.npy, D_T_tr.npy, D_I_te.npy, D_T_te.npy
(float64, rows = items) and D_L_tr.npy, D_L_te.npy (uint8 one-hot). Wikipedia: the standard split
(2173 train = database, 693 test = queries; image = 128-d SIFT BoVW, text = 10-d LDA), read from
wikiData_RFDH.mat (identical arrays to raw_features.mat, see data/wiki/SOURCE.md). UCI digits:
uci_all.mat, image = I (76-d Fourier), text = T (64-d Karhunen-Loeve), 1500 train / 500 test.
"""
import argparse
import os

import numpy as np
import scipy.io as sio


def dump(shared, out):
    os.makedirs(out, exist_ok=True)
    sources = {
        "wiki": os.path.join(shared, "data/wiki/wikiData_RFDH.mat"),
        "uci": os.path.join(shared, "data/uci_digits/uci_all.mat"),
    }
    for name, path in sources.items():
        d = sio.loadmat(path)
        for k in ["I_tr", "I_te", "T_tr", "T_te"]:
            np.save(os.path.join(out, f"{name}_{k}.npy"), np.asarray(d[k], dtype=np.float64))
        for k in ["L_tr", "L_te"]:
            idx = np.asarray(d[k]).ravel().astype(int) - 1
            np.save(os.path.join(out, f"{name}_{k}.npy"), np.eye(10, dtype=np.uint8)[idx])
        print(f"{name}: train {d['I_tr'].shape[0]}, test {d['I_te'].shape[0]} -> {out}")


def mean_ap(qb, db, ql, dl):
    """mAP over the full Hamming ranking, ties by database index, relevance = shared label."""
    bits = qb.shape[1]
    ham = 0.5 * (bits - qb @ db.T)
    rel = (ql.astype(np.int64) @ dl.T.astype(np.int64)) > 0
    aps = []
    for i in range(qb.shape[0]):
        r = rel[i, np.argsort(ham[i], kind="stable")]
        if r.sum() == 0:
            continue
        pos = np.nonzero(r)[0]
        aps.append(np.mean(np.cumsum(r)[pos] / (pos + 1)))
    return float(np.mean(aps))


def rbf(x, anchors, sigma):
    d2 = (x**2).sum(1)[:, None] + (anchors**2).sum(1)[None, :] - 2 * x @ anchors.T
    return np.exp(-np.maximum(d2, 0) / (2 * sigma * sigma))


def cca_itq(data, bits, seed, n_anchors=1000, reg=0.1, itq_iter=50):
    """Regularised CCA on RBF anchor features (anchors drawn from training rows, sigma = mean
    distance to the anchors), ITQ rotation on both modalities' projections, sign."""
    itr, ttr, ltr, ite, tte, lte = data
    rng = np.random.default_rng(seed)
    n = itr.shape[0]
    a = rng.choice(n, min(n_anchors, n), replace=False)
    feats = []
    for x, xe in [(itr, ite), (ttr, tte)]:
        anchors = x[a]
        sigma = np.sqrt(np.maximum(((x[:500, None, :] - anchors[None]) ** 2).sum(-1), 0)).mean()
        f, fe = rbf(x, anchors, sigma), rbf(xe, anchors, sigma)
        m = f.mean(0)
        feats.append((f - m, fe - m))
    (f1, f1e), (f2, f2e) = feats

    def isqrt(c):
        c = c + reg * np.trace(c) / c.shape[0] * np.eye(c.shape[0])
        w, v = np.linalg.eigh(c)
        return v @ np.diag(1 / np.sqrt(np.maximum(w, 1e-12))) @ v.T

    k1, k2 = isqrt(f1.T @ f1 / n), isqrt(f2.T @ f2 / n)
    u, _, vt = np.linalg.svd(k1 @ (f1.T @ f2 / n) @ k2)
    w1, w2 = k1 @ u[:, :bits], k2 @ vt[:bits].T
    v = np.vstack([f1 @ w1, f2 @ w2])
    r, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(itq_iter):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        uu, _, vv = np.linalg.svd(v.T @ b)
        r = uu @ vv
    enc = lambda f, w: np.where(f @ w @ r >= 0, 1.0, -1.0)
    return mean_ap(enc(f1e, w1), enc(f2, w2), lte, ltr), mean_ap(enc(f2e, w2), enc(f1, w1), lte, ltr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="target/segh_study")
    ap.add_argument("--cca-itq", action="store_true", help="also print the numpy CCA-ITQ reference (5 seeds)")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    dump(args.shared, args.out)
    if args.cca_itq:
        print("CCA-ITQ (numpy reference, 1000 RBF anchors, reg 0.1), encoded database, mean of", args.seeds, "seeds")
        for name in ["wiki", "uci"]:
            data = [np.load(os.path.join(args.out, f"{name}_{k}.npy")) for k in ["I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te"]]
            for bits in [16, 32, 64, 128]:
                r = np.mean([cca_itq(data, bits, s) for s in range(args.seeds)], axis=0)
                print(f"{name:5s} {bits:4d} bits  I->T {r[0]:.3f}  T->I {r[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
