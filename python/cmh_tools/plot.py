"""Plotting helpers (matplotlib, imported only when a function here is called).

Each function takes metrics in report.json's form (a direction of ``report.json``, or what
:func:`cmh_tools.evaluate` returns), keyed by a label, and draws onto ``ax`` (a new figure when
None); it returns the axes.
"""

__all__ = ["plot_pr_curve", "plot_precision_at_n", "plot_run"]


def _axes(ax):
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or cmh-tools[plot])") from None
    return plt.subplots(figsize=(5, 4))[1]


def _finish(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def plot_pr_curve(curves, ax=None, title=None):
    """Precision against recall by Hamming radius, one line per label (metrics need
    ``pr_curve``: report.json has it, :func:`cmh_tools.evaluate` with ``pr_curve=True``)."""
    ax = _axes(ax)
    for label, m in curves.items():
        if "pr_curve" not in m:
            raise ValueError(f"{label}: these metrics have no pr_curve")
        pts = m["pr_curve"]
        ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], marker=".", label=label)
    ax.set_xlim(0, 1)
    return _finish(ax, "recall", "precision", title)


def plot_precision_at_n(curves, ax=None, title=None):
    """Precision@N against N (logarithmic N axis), one line per label (metrics need
    ``precision_at_n``)."""
    ax = _axes(ax)
    for label, m in curves.items():
        if "precision_at_n" not in m:
            raise ValueError(f"{label}: these metrics have no precision_at_n")
        pts = m["precision_at_n"]
        ax.plot([n for n, _ in pts], [p for _, p in pts], marker=".", label=label)
    ax.set_xscale("log")
    return _finish(ax, "N", "precision@N", title)


def plot_run(runs, key="i2t", out=None):
    """Both curves of report.json's direction ``key`` for several runs side by side: ``runs`` is
    a dict {label: run} or a list of runs (labelled "method, bits"), each a :class:`cmh_tools.Run`
    or a report dict. Saved to ``out`` (any matplotlib format) when given. Returns the figure."""
    import matplotlib.pyplot as plt

    if not isinstance(runs, dict):
        labelled = {}
        for r in runs:
            rep = getattr(r, "report", r)
            label = base = f"{rep['method']}, {rep['bits']} bits"
            n = 1
            while label in labelled:
                n += 1
                label = f"{base} ({n})"
            labelled[label] = r
        runs = labelled
    metrics = {label: getattr(r, "report", r)[key] for label, r in runs.items()}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    plot_pr_curve(metrics, a, f"{key}: precision-recall by Hamming radius")
    plot_precision_at_n(metrics, b, f"{key}: precision@N")
    fig.tight_layout()
    if out:
        fig.savefig(out)
    return fig
