"""Shared fixtures: this checkout's package first on the path, the cmh binary, a small synthetic
bundle and small runs of SCH, CCA-ITQ, SeGH and SDCH trained on it by `cmh train`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYTHON_DIR)
sys.path.insert(0, PYTHON_DIR)

import cmh_tools  # noqa: E402

# Small runs, by folder name: (method, settings); seconds each. SeGH twice: on raw features and on
# RBF anchor features.
SMALL_RUNS = {
    "sch": ("sch", ["anchors=60"]),
    "cca-itq": ("cca-itq", ["anchors=60"]),
    "segh": ("segh", ["k=5", "anchors=0", "sigma_scale=[]"]),
    "segh-rbf": ("segh", ["k=5", "anchors=60"]),
    "sdch": ("sdch", ["epochs=3", "hidden=[32]", "feature_dim=16"]),
}
TOPK = 15


@pytest.fixture(scope="session")
def cmh_bin():
    """The cmh binary: $CMH_BIN (set by the cargo test that runs this suite), else
    target/release/cmh of this checkout."""
    path = os.environ.get("CMH_BIN") or os.path.join(REPO, "target", "release", "cmh")
    if not os.path.isfile(path):
        if os.environ.get("CMH_BIN"):
            pytest.fail(f"CMH_BIN={path} does not exist")
        pytest.skip(f"{path} not built (cargo build --release)")
    return path


@pytest.fixture(scope="session")
def cmh(cmh_bin):
    """Runs `cmh ARGS…` on one thread; returns stdout, fails the test with stderr on error."""

    def run(*args, check=True):
        p = subprocess.run([cmh_bin, "--threads", "1", *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            pytest.fail(f"cmh {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
        return p

    return run


def synthetic_bundle(path, seed=11, n=240, classes=8, queries=40):
    """Two modalities of class-structured features (class centre + noise): items 0..queries-1
    are queries, the rest the training set = database; random class embeddings (for SeGH)."""
    rng = np.random.default_rng(seed)
    cls = (np.arange(n) * 5 + np.arange(n) // 7) % classes

    def features(d):
        centres = rng.uniform(-1, 1, (classes, d))
        return (centres[cls] + 0.6 * rng.uniform(-1, 1, (n, d))).astype(np.float32)

    return cmh_tools.write_bundle(
        path, "pytest", [f"class-{k}" for k in range(classes)], [features(12), features(20)], np.eye(classes, dtype=np.uint8)[cls],
        split={"train": np.arange(queries, n), "query": np.arange(queries), "database": np.arange(queries, n)},
        class_embeddings=rng.uniform(-1, 1, (classes, 6)), source="synthetic (python/tests)")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return synthetic_bundle(os.path.join(tmp_path_factory.mktemp("data"), "bundle"))


@pytest.fixture(scope="session")
def train_runs(cmh, bundle, tmp_path_factory):
    """{name: `cmh train --out` folder} of the 16-bit SMALL_RUNS (seed 0, --topk 15)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, (method, params) in SMALL_RUNS.items():
        d = root / name
        args = ["train", "--method", method, "--data", bundle.path, "--bits", "16", "--topk", TOPK, "--device", "cpu", "--quiet", "--out", d]
        for p in params:
            args += ["--param", p]
        cmh(*args)
        out[name] = str(d)
    return out


@pytest.fixture(scope="session")
def runs(train_runs):
    """{name: Run} for the runs of `train_runs`."""
    return {name: cmh_tools.Run(os.path.join(d, "bits16-seed0")) for name, d in train_runs.items()}


def cmh_eval_json(cmh, q, db, ql, dl, topk=None):
    args = ["eval", "--query-codes", q, "--db-codes", db, "--query-labels", ql, "--db-labels", dl, "--json"]
    if topk:
        args += ["--topk", topk]
    return json.loads(cmh(*args).stdout)


def script(name, *args):
    """Runs scripts/NAME with this interpreter; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)], capture_output=True, text=True)
