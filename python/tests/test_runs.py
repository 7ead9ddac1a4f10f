"""The package on runs that `cmh train` wrote: every figure of report.json recomputed, `cmh eval`
on the same files, the numpy encoders against the exported codes and against `cmh encode`."""

import os

import numpy as np
import pytest

import cmh_tools as ct
from conftest import SMALL_RUNS, TOPK, cmh_eval_json

KEYS = ("i2t", "t2i", "i2t_encoded", "t2i_encoded")


def assert_same_metrics(got, want, what):
    assert got["excluded_queries"] == want["excluded_queries"], what
    for key in ("map", "map@k"):
        if key in want:
            assert abs(got[key] - want[key]) < 1e-9, f"{what} {key}: {got[key]} vs {want[key]}"
    if "precision_at_n" in want:
        assert [n for n, _ in got["precision_at_n"]] == [n for n, _ in want["precision_at_n"]]
        assert np.allclose([p for _, p in got["precision_at_n"]], [p for _, p in want["precision_at_n"]], rtol=0, atol=1e-9), what
    if "pr_curve" in want:
        for a, b in zip(got["pr_curve"], want["pr_curve"], strict=True):
            assert a["radius"] == b["radius"], what
            assert abs(a["precision"] - b["precision"]) < 1e-9 and abs(a["recall"] - b["recall"]) < 1e-9, f"{what} radius {a['radius']}"


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_report_figures_are_recomputed(runs, name):
    run, method = runs[name], SMALL_RUNS[name][0]
    assert run.method == method
    assert run.convention == ("encoded" if method == "cca-itq" else "learned-B")
    assert (run.train_codes() is None) == (method == "cca-itq")
    for key in KEYS:
        want = run.report[key]
        assert want["k"] == TOPK and want["pr_curve"] and want["precision_at_n"], key
        got = run.evaluate(key, topk=TOPK, precision_at=[n for n, _ in want["precision_at_n"]], pr_curve=True)
        assert_same_metrics(got, want, f"{name} {key}")


def test_equals_cmh_eval_on_the_run_files(cmh, runs):
    run = runs["sch"]
    f = lambda stem: os.path.join(run.path, f"{stem}.npy")  # noqa: E731
    for key, q, db in (("i2t_encoded", "query_image", "db_text_packed"), ("t2i", "query_text", "train_B")):
        want = cmh_eval_json(cmh, f(q), f(db), f("query_labels"), f("db_labels"), topk=TOPK)
        assert_same_metrics(run.evaluate(key, topk=TOPK), want, key)


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_numpy_encoder_reproduces_the_exported_codes(runs, bundle, name):
    run, method = runs[name], SMALL_RUNS[name][0]
    model = run.model()
    assert (model.method, model.bits) == (method, 16)
    if method == "segh":
        assert bool(model.meta.get("sigma")) == (name == "segh-rbf"), "segh-rbf uses anchor features, segh raw ones"
    if method != "cca-itq":
        assert np.array_equal(model.train_codes(), run.train_codes())
    for t in ("image", "text"):
        for part, exported in (("query", run.query_codes(t)), ("database", run.db_codes(t))):
            x = bundle.features(t)[run.split(part)]
            h, scale = model.project(t, x, with_scale=True)
            ours = model.encode(t, x)
            assert np.array_equal(ours, np.where(h >= 0, 1, -1))
            differ = ours != exported
            assert not (differ & (np.abs(h) > model.tie_tolerance * scale)).any(), f"{name} {part} {t}: {differ.sum()} bits differ"


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_numpy_encoder_equals_cmh_encode_on_new_items(cmh, runs, bundle, tmp_path, name):
    """Items the model never saw (training features perturbed and scaled); one modality per run,
    alternating (the other is checked against the exported codes above)."""
    run = runs[name]
    model = run.model()
    rng = np.random.default_rng(7)
    for t in [("image", "text")[list(SMALL_RUNS).index(name) % 2]]:
        x = bundle.features(t)[:50] * 1.3 + rng.normal(0, 0.5, (50, bundle.features(t).shape[1])).astype(np.float32)
        np.save(tmp_path / f"x_{t}.npy", x.astype(np.float32))
        cmh("encode", "--model", os.path.join(run.path, "model"), "--modality", t, "--features", tmp_path / f"x_{t}.npy", "--out", tmp_path / f"c_{t}")
        want = ct.load_codes(tmp_path / f"c_{t}.npy")
        h, scale = model.project(t, x, with_scale=True)
        differ = model.encode(t, x) != want
        assert not (differ & (np.abs(h) > model.tie_tolerance * scale)).any(), f"{name} {t}"
        # The encoder is not trivially right: a tampered projection disagrees.
        assert (np.where(-h >= 0, 1, -1) != want).mean() > 0.9


def test_runs_are_found_and_errors_name_the_folder(train_runs, tmp_path):
    found = ct.find_runs(os.path.dirname(train_runs["sch"]))
    assert sorted(r.method for r in found) == sorted(method for method, _ in SMALL_RUNS.values())
    assert ct.read_report(train_runs["sch"])["runs"][0]["method"] == "sch"
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        ct.Run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model here"):
        ct.load_model(tmp_path)


def test_bundle_is_found_from_run_json(runs, bundle):
    assert os.path.samefile(runs["sch"].bundle().path, bundle.path)
    assert ct.load_bundle(bundle.path).n_items == 240


def test_write_bundle_is_accepted_by_cmh(cmh, bundle, tmp_path):
    info = cmh("data", "info", bundle.path).stdout
    assert "240 items, 8 classes" in info and "fixed split: 200 train, 40 query, 200 database" in info
    with pytest.raises(FileExistsError):
        ct.write_bundle(bundle.path, "x", ["a"], [np.zeros((1, 1))], np.ones((1, 1)))
    with pytest.raises(ValueError, match="at least one label per row"):
        ct.write_bundle(tmp_path / "b", "x", ["a", "b"], [np.zeros((2, 1))], np.array([[1, 0], [0, 0]]))
    assert not os.path.exists(tmp_path / "b") and os.listdir(tmp_path) == []
