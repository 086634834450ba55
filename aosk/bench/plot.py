"""Plots of benchmark results, drawn with matplotlib when it is installed (the optional
extra ``bench``: ``pip install -e '.[bench]'``); without it the benchmarks still run
and say how to get the plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aosk.bench.worker import WorkerBenchResult

INSTALL_HINT = "pip install -e '.[bench]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401 - imported only to see whether it is installed
    except ImportError:
        return False
    return True


def latency_plot(r: WorkerBenchResult, path: Path, *, title: str) -> bool:
    """p50 / p90 / p99 produce -> verdict latency (ms, log scale) against the offered rate,
    as a PNG at ``path``; False (nothing written) without matplotlib. A percentile that
    fell on an event without a verdict is left out of its line."""
    if not have_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(r.latency, key=lambda x: x.offered)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, marker in (("p50", "o"), ("p90", "s"), ("p99", "^")):
        xs = [x.offered for x in runs if math.isfinite(getattr(x, name))]
        ys = [getattr(x, name) * 1e3 for x in runs if math.isfinite(getattr(x, name))]
        ax.plot(xs, ys, marker=marker, label=name)
    ax.set_xlabel("offered rate (events/s, open loop)")
    ax.set_ylabel("produce -> verdict latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
