"""Plots of a FastNAS search (matplotlib, optional): the sensitivity map, the thresholds visited, and
predicted vs measured latency."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["have_matplotlib", "plot_latency", "plot_sensitivity_map", "plot_thresholds"]


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (plots are skipped without it)."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    # The object API with an Agg canvas: no pyplot, no global backend switch, no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_sensitivity_map(sensitivity: Mapping[str, Mapping[int, float]], path: str | Path,
                         score_name: str = "score") -> Path:
    """One line per hparam: score drop (monotone) against the kept fraction of its width."""
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    for name, drops in sensitivity.items():
        widest = max(drops)
        choices = sorted(drops)
        ax.plot([c / widest for c in choices], [drops[c] for c in choices], marker="o", markersize=3, label=name)
    ax.set_xlabel("kept fraction of the layer's width")
    ax.set_ylabel(f"{score_name} drop")
    ax.set_title("FastNAS sensitivity map (each layer narrowed alone)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out


def plot_thresholds(visited: Sequence[Mapping[str, Any]], reference_flops: float, path: str | Path,
                    flops_limit: float | None = None, score_name: str = "score",
                    original_score: float | None = None) -> Path:
    """Score against FLOPs (% of the original) for every threshold the binary search visited.

    Each entry needs ``flops``, ``satisfied`` and ``score`` (a measured score; entries without one
    are drawn at their ``predicted_score``).
    """
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for satisfied, colour, label in ((True, "tab:green", "meets the budget"), (False, "tab:red", "over budget")):
        points = [v for v in visited if bool(v["satisfied"]) == satisfied]
        xs = [100.0 * float(v["flops"]) / reference_flops for v in points]
        ys = [float(v.get("score", v.get("predicted_score")) or 0.0) for v in points]
        ax.scatter(xs, ys, c=colour, label=label, zorder=3)
        for i, v in enumerate(points):
            ax.annotate(str(visited.index(v) + 1), (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if flops_limit is not None:
        ax.axvline(100.0 * flops_limit / reference_flops, color="grey", linestyle="--", label="FLOPs budget")
    if original_score is not None:
        ax.axhline(original_score, color="tab:blue", linestyle=":", label="unpruned")
    ax.set_xlabel("FLOPs (% of the original)")
    ax.set_ylabel(score_name)
    ax.set_title("Thresholds visited by the binary search (numbers: step)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out


def plot_latency(points: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
                 tolerance: float = 0.10) -> Path:
    """Predicted against measured latency (ms), one dot per subnet, with the ``y = x`` line and a
    ``tolerance`` band. Each point needs ``predicted`` and ``measured``, optionally a ``label``."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    xs = [float(p["measured"]) for p in points]
    ys = [float(p["predicted"]) for p in points]
    ax.scatter(xs, ys, c="tab:blue", zorder=3)
    for p, x, y in zip(points, xs, ys):
        if p.get("label"):
            ax.annotate(str(p["label"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    top = 1.1 * max(xs + ys) if points else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="prediction = measurement")
    ax.fill_between([0, top], [0, top * (1 - tolerance)], [0, top * (1 + tolerance)], color="grey", alpha=0.15,
                    label=f"within {100 * tolerance:.0f}%")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured latency of the exported subnet (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title or "Latency model: predicted vs measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
