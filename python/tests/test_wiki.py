"""The package on a real benchmark: SCH at its defaults on the Wikipedia bundle (data/wiki, when
present), every report.json figure recomputed and every exported code re-encoded in numpy."""

import os

import numpy as np
import pytest

import cmh_tools as ct
from conftest import REPO

WIKI = os.path.join(REPO, "data", "wiki")


@pytest.fixture(scope="module")
def wiki_run(cmh, tmp_path_factory):
    if not os.path.isfile(os.path.join(WIKI, "bundle.json")):
        pytest.skip(f"{WIKI} not present (cmh data convert --format wiki)")
    out = tmp_path_factory.mktemp("wiki") / "sch"
    cmh("train", "--method", "sch", "--data", WIKI, "--bits", "32", "--topk", "100", "--quiet", "--out", out)
    return ct.Run(out / "bits32-seed0")


def test_report_figures_and_codes(wiki_run):
    run = wiki_run
    assert run.convention == "learned-B" and run.report["split"]
    for key in ("i2t", "t2i", "i2t_encoded", "t2i_encoded"):
        want = run.report[key]
        got = run.evaluate(key, topk=100, precision_at=[n for n, _ in want["precision_at_n"]], pr_curve=True)
        assert got["n_queries"] == 693 and got["excluded_queries"] == want["excluded_queries"]
        assert abs(got["map"] - want["map"]) < 1e-9 and abs(got["map@k"] - want["map@k"]) < 1e-9, key
        assert np.allclose([p for _, p in got["precision_at_n"]], [p for _, p in want["precision_at_n"]], rtol=0, atol=1e-9), key
        for a, b in zip(got["pr_curve"], want["pr_curve"]):
            assert abs(a["precision"] - b["precision"]) < 1e-9 and abs(a["recall"] - b["recall"]) < 1e-9, (key, a["radius"])
    model, bundle = run.model(), run.bundle()
    for t in ("image", "text"):
        for part, exported in (("query", run.query_codes(t)), ("database", run.db_codes(t))):
            h, scale = model.project(t, bundle.features(t)[run.split(part)], with_scale=True)
            differ = np.where(h >= 0, 1, -1) != exported
            assert not (differ & (np.abs(h) > model.tie_tolerance * scale)).any(), (t, part, int(differ.sum()))
