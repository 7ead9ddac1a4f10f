"""Retrieval metrics computed exactly as ``cmh eval`` and ``report.json`` compute them.

The conventions (README, "Evaluation conventions"):

- relevance: a query and a database item are relevant when they share at least one label;
- ranking: by (Hamming distance, database index), no random tie-breaking;
- mAP: the mean over queries of AP = (1/R) Σ P@r over the positions r of the relevant items in the
  full ranking, R = relevant items in the database; queries with R = 0 are left out of every
  mean and counted (``excluded_queries``);
- mAP@k: AP@k = (1/R_k) Σ_{r ≤ k} P@r over the relevant positions in the top k, R_k = relevant
  items in the top k; 0 when the top k holds none;
- precision@N: (relevant items in the top N) / N, averaged over the counted queries;
- precision–recall by Hamming radius r = 0 … bits: the items within distance ≤ r; precision is
  averaged over the counted queries that retrieve at least one item (0 when none does), recall
  over all counted queries.

cmh counts items per distance and never sorts; this module sorts each query's ranking (a stable
sort keeps database order within a distance), an independent way to the same figures.
"""

import numpy as np

from .codes import _words, as_packed, hamming_distances

__all__ = ["evaluate", "evaluate_distances", "relevance"]

# Queries per block: keeps the per-block temporaries near 64 MB.
_BLOCK_ENTRIES = 1 << 23


def relevance(query_labels, db_labels):
    """Relevance matrix (bool, queries × database): the two items share at least one label."""
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    if ql.ndim != 2 or dl.ndim != 2:
        raise ValueError(f"labels must be 2-d (items × classes), found shapes {ql.shape} and {dl.shape}")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query labels have {ql.shape[1]} classes, database labels {dl.shape[1]}")
    # Label rows as bitsets: relevant when the AND of two rows is non-zero.
    qw, dw = _words(np.packbits(ql != 0, axis=1)), _words(np.packbits(dl != 0, axis=1))
    out = np.zeros((qw.shape[0], dw.shape[0]), dtype=bool)
    for w in range(qw.shape[1]):
        out |= (qw[:, w, None] & dw[None, :, w]) != 0
    return out


def evaluate(query_codes, db_codes, query_labels, db_labels, topk=None, precision_at=(), pr_curve=False, bits=None):
    """One retrieval direction, as ``cmh eval`` / one direction of ``report.json``.

    Codes in any of cmh's forms (see :mod:`cmh_tools.codes`), labels as 0/1 matrices. Returns a
    dict with report.json's keys: ``map``, ``n_queries``, ``excluded_queries``, and when asked
    ``map@k`` and ``k``, ``precision_at_n`` (``[[N, value], …]``), ``pr_curve``
    (``[{"radius", "precision", "recall"}, …]`` for radius 0 … bits).
    """
    _, nbits = as_packed(query_codes, bits, "query codes")
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    dist = hamming_distances(query_codes, db_codes, bits)
    if ql.shape[0] != dist.shape[0]:
        raise ValueError(f"{dist.shape[0]} query codes but {ql.shape[0]} query label rows")
    if dl.shape[0] != dist.shape[1]:
        raise ValueError(f"{dist.shape[1]} database codes but {dl.shape[0]} database label rows")
    return evaluate_distances(dist, relevance(ql, dl), topk, precision_at, range(nbits + 1) if pr_curve else None)


def evaluate_distances(dist, relevant, topk=None, precision_at=(), radii=None):
    """:func:`evaluate` for any distances (queries × database; smaller = nearer, ties by database
    index) and a relevance matrix (bool, same shape): rank items by a real-valued score with
    ``dist = -score``. ``radii`` gives the points of the precision–recall curve (items with
    distance ≤ radius), None for none."""
    dist = np.asarray(dist)
    relevant = np.asarray(relevant, dtype=bool)
    if dist.ndim != 2 or dist.shape != relevant.shape:
        raise ValueError(f"distances {dist.shape} and relevance {relevant.shape} must be the same 2-d shape")
    nq, n = dist.shape
    if nq == 0 or n == 0:
        raise ValueError("evaluation needs at least one query and one database item")
    if topk is not None and topk < 1:
        raise ValueError("mAP@k needs k >= 1")
    precision_at = [int(v) for v in precision_at]
    if any(v < 1 for v in precision_at):
        raise ValueError("precision@N needs N >= 1")
    radii = None if radii is None else list(radii)
    if np.issubdtype(dist.dtype, np.integer) and dist.min() >= 0 and dist.max() < 65536:
        # Small non-negative integers (Hamming distances): numpy's stable sort is a radix sort.
        dist = dist.astype(np.uint8 if dist.max() < 256 else np.uint16)
    top_value = np.iinfo(dist.dtype).max if np.issubdtype(dist.dtype, np.integer) else None
    positions = np.arange(1, n + 1)
    ap, apk, counted = [], [], []
    hits_at = [[] for _ in precision_at]
    pr_prec = [[] for _ in radii or ()]
    pr_rec = [[] for _ in radii or ()]
    step = max(1, _BLOCK_ENTRIES // n)
    for s in range(0, nq, step):
        d = dist[s:s + step]
        order = np.argsort(d, axis=1, kind="stable")
        rel = np.take_along_axis(relevant[s:s + step], order, axis=1)
        total = rel.sum(1)
        keep = total > 0
        counted.append(keep)
        rel, total = rel[keep], total[keep]
        hits = np.cumsum(rel, axis=1, dtype=np.int32)     # relevant items in the top r, every r
        precision = hits / positions                      # P@r
        ap.append((precision * rel).sum(1) / total)
        if topk is not None:
            k = min(topk, n)
            top = rel[:, :k]
            in_top = top.sum(1)
            apk.append(np.where(in_top > 0, (precision[:, :k] * top).sum(1) / np.maximum(in_top, 1), 0.0))
        for acc, big_n in zip(hits_at, precision_at):
            acc.append(hits[:, min(big_n, n) - 1] / big_n)
        if radii:
            sorted_d = np.take_along_axis(d[keep], order[keep], axis=1)
            for i, r in enumerate(radii):
                retrieved = (sorted_d <= (r if top_value is None else min(r, top_value))).sum(1)
                rel_within = np.where(retrieved > 0, hits[np.arange(len(hits)), np.maximum(retrieved, 1) - 1], 0)
                pr_prec[i].append((rel_within[retrieved > 0] / retrieved[retrieved > 0]))
                pr_rec[i].append(rel_within / total)
    excluded = int(nq - np.concatenate(counted).sum())
    denom = max(nq - excluded, 1)

    def mean(parts):
        return float(np.concatenate(parts).sum() / denom) if parts else 0.0

    out = {"map": mean(ap), "n_queries": int(nq), "excluded_queries": excluded}
    if topk is not None:
        out["map@k"] = mean(apk)
        out["k"] = int(topk)
    if precision_at:
        out["precision_at_n"] = [[big_n, mean(v)] for big_n, v in zip(precision_at, hits_at)]
    if radii:
        curve = []
        for r, p, rec in zip(radii, pr_prec, pr_rec):
            p = np.concatenate(p)
            curve.append({"radius": r, "precision": float(p.mean()) if len(p) else 0.0, "recall": mean(rec)})
        out["pr_curve"] = curve
    return out
