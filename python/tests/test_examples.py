"""The Rust examples (examples/*.rs, built by `cargo build --release --examples`) on the synthetic
bundle: train SCH and search, then encode new items with the saved model."""

import os
import re
import subprocess

import numpy as np
import pytest

import cmh_tools as ct


@pytest.fixture(scope="module")
def examples(cmh_bin):
    d = os.path.join(os.path.dirname(cmh_bin), "examples")
    if not os.path.isfile(os.path.join(d, "train_sch_and_search")):
        pytest.skip(f"examples not built in {d} (cargo build --release --examples)")
    return d


def run(examples, name, *args):
    p = subprocess.run([os.path.join(examples, name), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"{name} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_train_search_then_encode(examples, bundle, tmp_path):
    model_dir = tmp_path / "model"
    out = run(examples, "train_sch_and_search", bundle.path, 16, model_dir)
    model = ct.load_model(model_dir)
    assert (model.method, model.bits) == ("sch", 16)
    # The printed text->image mAP is the one of the saved model's codes.
    q = model.encode("text", bundle.features("text")[bundle.split("query")])
    db = model.encode("image", bundle.features("image")[bundle.split("database")])
    labels = bundle.labels()
    m = ct.evaluate(q, db, labels[bundle.split("query")], labels[bundle.split("database")], topk=100)
    printed = re.search(r"mAP ([0-9.]+), mAP@100 ([0-9.]+)", out)
    assert printed, out
    assert abs(float(printed.group(1)) - m["map"]) < 6e-5 and abs(float(printed.group(2)) - m["map@k"]) < 6e-5, out
    # The 5 nearest images of the first text query.
    idx, dist = ct.topk(q[:1], db, 5)
    listed = re.findall(r"image +(\d+) at distance +(\d+)", out)
    assert [(int(i), int(d)) for i, d in listed] == [(int(bundle.split("database")[j]), int(k)) for j, k in zip(idx[0], dist[0])], out

    x = bundle.features("image")[:25] + 0.1
    np.save(tmp_path / "x.npy", x)
    run(examples, "encode_with_saved_model", model_dir, "image", tmp_path / "x.npy", tmp_path / "codes")
    assert np.array_equal(ct.load_codes(tmp_path / "codes.npy"), model.encode("image", x))
