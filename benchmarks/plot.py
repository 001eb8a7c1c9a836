"""The README's plot: time against circuit size per provider, log-log (KLay paper, Figure 6).

Optional: without matplotlib (``pip install matplotlib``, or the ``bench`` extra) the harness
says so and writes no PNG.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections import defaultdict

from .harness import TIMED

MARKERS = {
    "trilay": "o",
    "trilay-torch": "h",
    "trilay-graphs": "P",
    "trilay-layers": "*",
    "scatter": "s",
    "naive": "x",
    "klay": "^",
    "klay-compiled": "v",
    "pysdd": "D",
}


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_time_vs_size(rows: list[dict], path: str | os.PathLike, title: str) -> pathlib.Path:
    """One panel per (mode, batch): median time (ms) against edges, one line per provider,
    with the interquartile range as error bars. Only rows that passed the gate and were timed
    are drawn (a noisy row too: its error bar shows it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] in TIMED]
    panels = sorted({(r["mode"], r["batch"]) for r in ok}, key=lambda p: (p[0] != "forward", p[1]))
    if not panels:
        raise ValueError("no timed rows to plot")
    modes = sorted({m for m, _ in panels}, key=lambda m: m != "forward")
    batches = sorted({b for _, b in panels})
    fig, axes = plt.subplots(
        len(modes),
        len(batches),
        figsize=(4.2 * len(batches), 3.6 * len(modes)),
        squeeze=False,
        sharex=True,
    )
    from matplotlib.ticker import NullFormatter

    providers = list(dict.fromkeys(r["provider"] for r in ok))
    ticks = {}  # one labelled tick per circuit: its name and edge count
    for r in ok:
        ticks.setdefault(r["edges"], f"{r['workload']} ({r['edges']})")
    for i, mode in enumerate(modes):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            series = defaultdict(list)
            for r in ok:
                if r["mode"] == mode and r["batch"] == batch:
                    series[r["provider"]].append(r)
            for provider in providers:
                points = sorted(series.get(provider, []), key=lambda r: r["edges"])
                if not points:
                    continue
                xs = [r["edges"] for r in points]
                ys = [r["median_ms"] for r in points]
                err = [
                    [r["median_ms"] - r["q25_ms"] for r in points],
                    [r["q75_ms"] - r["median_ms"] for r in points],
                ]
                ax.errorbar(
                    xs, ys, yerr=err, marker=MARKERS.get(provider, "."), label=provider, capsize=2
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(sorted(ticks), [ticks[e] for e in sorted(ticks)], fontsize=7)
            for label in ax.get_xticklabels():
                label.set_rotation(40)
                label.set_horizontalalignment("right")
            ax.set_title(f"{mode}, batch {batch}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(modes) - 1:
                ax.set_xlabel("circuit edges")
            if j == 0:
                ax.set_ylabel("median time (ms)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.suptitle(title, fontsize=10, y=0.005, va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1 - 0.3 / (3.6 * len(modes))))
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
