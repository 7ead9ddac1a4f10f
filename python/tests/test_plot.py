"""Plotting helpers draw the figures they are given (skipped when matplotlib is not installed)."""

import os

import numpy as np
import pytest

import cmh_tools as ct
from cmh_tools import plot

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def test_curves_hold_the_metrics(runs, tmp_path):
    rep = runs["sch"].report
    ax = plot.plot_pr_curve({"sch": rep["i2t"]})
    x, y = ax.lines[0].get_data()
    assert np.allclose(x, [p["recall"] for p in rep["i2t"]["pr_curve"]]) and np.allclose(y, [p["precision"] for p in rep["i2t"]["pr_curve"]])
    m = ct.evaluate(runs["sch"].query_codes("text"), runs["sch"].db_codes("image"), runs["sch"].labels("query"), runs["sch"].labels("db"),
                    precision_at=[1, 10, 100])
    ax = plot.plot_precision_at_n({"t2i": m})
    x, y = ax.lines[0].get_data()
    assert list(x) == [1, 10, 100] and np.allclose(y, [p for _, p in m["precision_at_n"]])
    with pytest.raises(ValueError, match="no pr_curve"):
        plot.plot_pr_curve({"t2i": m})
    fig = plot.plot_run(list(runs.values()), "t2i", out=tmp_path / "t2i.png")
    assert len(fig.axes[0].lines) == len(runs) and os.path.getsize(tmp_path / "t2i.png") > 1000
    # Two SeGH runs of one length get two labels.
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "segh, 16 bits" in labels and "segh, 16 bits (2)" in labels, labels
