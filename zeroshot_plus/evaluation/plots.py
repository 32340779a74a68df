"""Plots of a benchmark summary: accuracy vs shots per data set, and per-method bars.

matplotlib is an optional extra (``pip install zeroshot_plus[plots]``), imported when a plot
is drawn; without it one sentence is logged and no plot is written. Figures are drawn on
matplotlib's ``Figure`` directly (no pyplot, no global backend) and written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from ..data.files import atomic_output

log = logging.getLogger(__name__)


def plot_summary(rows: Sequence[Mapping], folder: Path) -> list[Path]:
    """``folder/shots_<data set>.png`` (top-1 vs shots of the few-shot runs, zero-shot runs
    as shots 0) for each data set with few-shot runs, and ``folder/methods_<protocol>.png``
    (top-1 per data set and method, the largest shots of each) for the protocols with a top-1.
    Returns the files written; none when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed, so no plots were drawn "
                    "(pip install 'zeroshot_plus[plots]').")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    accuracy = [row for row in rows if "top1" in row["metrics"]]
    for dataset in dict.fromkeys(row["dataset"] for row in accuracy):
        curves = _shot_curves([r for r in accuracy if r["dataset"] == dataset])
        if not any(len(points) > 1 for points in curves.values()):
            continue
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        axes = figure.add_subplot()
        for method, points in curves.items():
            shots, means, stds = zip(*sorted(points))
            axes.errorbar(shots, [100 * m for m in means], yerr=[100 * s for s in stds],
                          marker="o", capsize=3, label=method)
        axes.set(xlabel="shots per class", ylabel="top-1 accuracy (%)", title=dataset)
        axes.set_xscale("symlog", base=2, linthresh=1)
        ticks = sorted({shots for points in curves.values() for shots, _, _ in points})
        axes.set_xticks(ticks, [str(t) for t in ticks])
        axes.legend()
        written.append(_save(figure, folder / f"shots_{dataset}.png"))
    for protocol in dict.fromkeys(row["protocol"] for row in accuracy):
        bars = _largest_shots([r for r in accuracy if r["protocol"] == protocol])
        datasets = list(dict.fromkeys(d for d, _ in bars))
        methods = list(dict.fromkeys(m for _, m in bars))
        figure = Figure(figsize=(max(4, 1.2 * len(datasets) * len(methods) ** 0.5), 3.5),
                        layout="constrained")
        axes = figure.add_subplot()
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            present = [(i, bars[d, method]) for i, d in enumerate(datasets) if (d, method) in bars]
            axes.bar([i + (j - (len(methods) - 1) / 2) * width for i, _ in present],
                     [100 * m for _, (m, _) in present], width,
                     yerr=[100 * s for _, (_, s) in present], capsize=2, label=method)
        axes.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
        axes.set(ylabel="top-1 accuracy (%)", title=f"{protocol} (each method at its most shots)")
        axes.legend()
        written.append(_save(figure, folder / f"methods_{protocol}.png"))
    return written


def _shot_curves(rows: Sequence[Mapping]) -> dict[str, list[tuple[int, float, float]]]:
    """method -> [(shots, mean, std)] of one data set's zero-shot and few-shot rows."""
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        if row["protocol"] in ("zeroshot", "fewshot"):
            curves.setdefault(row["method"], []).append((row["shots"], *row["metrics"]["top1"]))
    return curves


def _largest_shots(rows: Sequence[Mapping]) -> dict[tuple[str, str], tuple[float, float]]:
    """(data set, method) -> top-1 (mean, std) of its row with the most shots."""
    best: dict[tuple[str, str], Mapping] = {}
    for row in rows:
        key = (row["dataset"], row["method"])
        if key not in best or row["shots"] > best[key]["shots"]:
            best[key] = row
    return {key: row["metrics"]["top1"] for key, row in best.items()}


def _save(figure, path: Path) -> Path:
    with atomic_output(path, binary=True) as stream:
        figure.savefig(stream, format="png", dpi=120)
    return path
