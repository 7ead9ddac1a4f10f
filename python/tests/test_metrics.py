"""The metrics against a hand-worked example and against `cmh eval`."""

import numpy as np
import pytest

import cmh_tools as ct
from conftest import cmh_eval_json

# Three queries, five database items, 4-bit codes, classes A B C D.
#   q1 = ++++ (A): distances 2 0 2 1 2 -> ranking 1 3 0 2 4; relevant 3, 0, 4 at positions 2, 3, 5
#   q2 = ---- (B): distances 2 4 2 3 2 -> ranking 0 2 4 3 1; relevant 4, 1 at positions 3, 5
#   q3 = ++++ (D): no relevant item -> excluded
Q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, 1, 1]], dtype=np.int8)
DB = np.array([[1, 1, -1, -1], [1, 1, 1, 1], [1, -1, 1, -1], [1, 1, 1, -1], [-1, -1, 1, 1]], dtype=np.int8)
QL = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
DL = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=np.uint8)


def test_hand_worked_example():
    m = ct.evaluate(Q, DB, QL, DL, topk=2, precision_at=[1, 3, 10], pr_curve=True)
    ap1 = (1 / 2 + 2 / 3 + 3 / 5) / 3      # ties at distance 2 in database order: 0, 2, 4
    ap2 = (1 / 3 + 2 / 5) / 2
    assert m["map"] == pytest.approx((ap1 + ap2) / 2, abs=1e-15)
    assert (m["n_queries"], m["excluded_queries"]) == (3, 1)
    # AP@2: q1 has one relevant item in its top 2 (P@2 = 1/2); q2 none (0).
    assert m["map@k"] == pytest.approx(0.25, abs=1e-15) and m["k"] == 2
    # P@N divides by N even beyond the database size.
    assert [n for n, _ in m["precision_at_n"]] == [1, 3, 10]
    assert [p for _, p in m["precision_at_n"]] == pytest.approx([0.0, (2 / 3 + 1 / 3) / 2, (3 / 10 + 2 / 10) / 2], abs=1e-15)
    # By radius: precision over queries that retrieve something (q2 retrieves nothing below 2).
    want = [(0, 0.0, 0.0), (1, 0.5, (1 / 3) / 2), (2, (0.6 + 1 / 3) / 2, 0.75), (3, (0.6 + 0.25) / 2, 0.75), (4, (0.6 + 0.4) / 2, 1.0)]
    got = [(p["radius"], p["precision"], p["recall"]) for p in m["pr_curve"]]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert np.allclose([g[1:] for g in got], [w[1:] for w in want], atol=1e-15)


def test_ties_are_broken_by_database_index():
    # Swapping two equidistant database items moves the relevant one ahead: the AP changes.
    perm = [0, 1, 4, 3, 2]
    m = ct.evaluate(Q[:1], DB[perm], QL[:1], DL[perm])
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3, abs=1e-15)


def test_scores_rank_like_distances():
    # evaluate_distances with dist = -score ranks by a real-valued score.
    dist = ct.hamming_distances(Q, DB)
    rel = ct.relevance(QL, DL)
    assert ct.evaluate_distances(-(4 - dist) * 0.5, rel)["map"] == ct.evaluate(Q, DB, QL, DL)["map"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="3 query codes but 2 query label rows"):
        ct.evaluate(Q, DB, QL[:2], DL)
    with pytest.raises(ValueError, match="classes"):
        ct.evaluate(Q, DB, QL[:, :3], DL)
    with pytest.raises(ValueError, match="k >= 1"):
        ct.evaluate(Q, DB, QL, DL, topk=0)


@pytest.mark.parametrize("bits,classes,labels", [(16, 12, 1), (64, 12, 3), (70, 70, 2)])
def test_equals_cmh_eval(cmh, tmp_path, bits, classes, labels):
    """Random codes and labels (one-hot or multi-hot, more than 64 classes, some queries with no
    relevant item)."""
    rng = np.random.default_rng(bits)
    nq, n = 60, 700
    q = np.where(rng.random((nq, bits)) < 0.5, 1, -1).astype(np.int8)
    d = np.where(rng.random((n, bits)) < 0.5, 1, -1).astype(np.int8)

    def lab(k):
        out = np.zeros((k, classes), dtype=np.uint8)
        for i in range(k):
            out[i, rng.choice(classes - 1, size=labels, replace=False)] = 1
        return out

    ql, dl = lab(nq), lab(n)
    ql[:3] = 0
    ql[:3, -1] = 1          # the last class has no database item: three excluded queries
    files = {}
    for name, a in {"q": q, "d": ct.pack(d), "ql": ql, "dl": dl}.items():
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], a)
    want = cmh_eval_json(cmh, files["q"], files["d"], files["ql"], files["dl"], topk=25)
    got = ct.evaluate(q, d, ql, dl, topk=25)
    assert got["excluded_queries"] == want["excluded_queries"] == 3
    assert abs(got["map"] - want["map"]) < 1e-12
    assert abs(got["map@k"] - want["map@k"]) < 1e-12
