"""The command lines in scripts/ over the package, on the runs `cmh train` wrote: they recompute
report.json, reproduce the exported codes, and fail when a report or a model is tampered with."""

import json
import os
import shutil

import numpy as np
import pytest

import cmh_tools as ct
from conftest import SMALL_RUNS, TOPK, script


@pytest.fixture()
def runs_copy(train_runs, tmp_path):
    """A private copy of the runs (these tests tamper with files)."""
    root = tmp_path / "runs"
    for method, d in train_runs.items():
        shutil.copytree(d, root / method)
    return root


def analyze(path, json_out):
    p = script("analyze_codes.py", path, "--json", json_out)
    return p, (json.loads(open(json_out).read()) if os.path.isfile(json_out) else None)


def test_analyze_codes_recomputes_the_report_and_reencodes(runs_copy, tmp_path):
    p, v = analyze(runs_copy, tmp_path / "a.json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert v["failures"] == 0 and len(v["runs"]) == len(SMALL_RUNS), p.stdout
    for method in SMALL_RUNS:
        r = v["runs"][f"{method}/bits16-seed0"]
        report = ct.read_report(runs_copy / method / "bits16-seed0")
        for key in ("i2t", "t2i", "i2t_encoded", "t2i_encoded"):
            want = report[key]
            assert abs(r["map"][key]["map"] - want["map"]) < 1e-9 and abs(r["map"][key]["map@k"] - want["map@k"]) < 1e-9, f"{method} {key}"
            assert r["map"][key]["k"] == TOPK and r["map"][key]["excluded_queries"] == want["excluded_queries"]
        assert sorted(r["encode"]) == ["db_image", "db_text", "query_image", "query_text"], method
        assert all(e["not_at_a_tie"] == 0 for e in r["encode"].values()), method
        s = r["stats"]["db_text"]
        assert s["n"] == 200 and s["bits"] == 16 and 1 <= s["distinct_codes"] <= 200


def test_analyze_codes_fails_on_a_tampered_report_or_model(runs_copy, tmp_path):
    sch = runs_copy / "sch" / "bits16-seed0"
    rp = sch / "report.json"
    original = rp.read_text()
    report = json.loads(original)
    report["t2i_encoded"]["map"] += 1e-7
    rp.write_text(json.dumps(report))
    p, _ = analyze(sch, tmp_path / "a.json")
    assert p.returncode == 1 and "MISMATCH" in p.stdout, "a report off by 1e-7 must fail"
    rp.write_text(original)
    assert analyze(sch, tmp_path / "a.json")[0].returncode == 0
    # Negate the first column of R: bit 0 of every re-encoded item flips.
    r = np.load(sch / "model" / "R.npy")
    r[:, 0] *= -1
    np.save(sch / "model" / "R.npy", r)
    p, v = analyze(sch, tmp_path / "a.json")
    assert p.returncode == 1, "a tampered model must fail the encode check"
    assert v["runs"]["."]["encode"]["query_image"]["not_at_a_tie"] >= 30, "bit 0 of ~40 queries should differ"


def test_sch_t2i_analysis(train_runs, tmp_path):
    out = tmp_path / "t2i.json"
    p = script("sch_t2i_analysis.py", train_runs["sch"], "--designs", 3, "--json", out)
    assert p.returncode == 0, p.stderr
    v = json.loads(out.read_text())
    assert len(v) == 1
    run, r = next(iter(v.items()))
    assert abs(r["t2i_B"] - ct.read_report(run)["t2i"]["map"]) < 1e-9, r
    for k in ("purity", "acc", "tied_top", "t2i_real", "sim_actual", "sim_random_mean", "sim_random_max"):
        assert 0.0 <= r[k] <= 1.0, (k, r)
    assert r["sim_random_max"] >= r["sim_random_mean"]
    if r["purity"] == 1.0:
        assert abs(r["t2i_classB"] - r["t2i_B"]) < 1e-12, "B is one code per class"


def test_sch_t2i_analysis_refuses_multi_label_runs(runs_copy):
    labels = runs_copy / "sch" / "bits16-seed0" / "db_labels.npy"
    lab = np.load(labels)
    lab[0, :] = 1
    np.save(labels, lab)
    p = script("sch_t2i_analysis.py", runs_copy / "sch")
    assert p.returncode != 0 and "multi-label" in p.stderr, p.stderr


def test_sdch_encode_cli(runs, bundle, tmp_path):
    run = runs["sdch"]
    x = bundle.features("text")[:30]
    np.save(tmp_path / "x.npy", x)
    p = script("sdch_encode.py", os.path.join(run.path, "model"), tmp_path / "x.npy", "--side", "txt", "--out", tmp_path / "c.npy")
    assert p.returncode == 0, p.stderr
    assert np.array_equal(np.load(tmp_path / "c.npy"), run.model().encode("text", x))
    p = script("sdch_encode.py", os.path.join(runs["sch"].path, "model"), tmp_path / "x.npy", "--side", "txt", "--out", tmp_path / "d.npy")
    assert p.returncode != 0 and "not an SDCH model" in p.stderr
