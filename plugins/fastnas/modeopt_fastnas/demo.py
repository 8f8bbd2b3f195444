"""``modeopt demo``: train the digits CNN, prune it with FastNAS, fine-tune, export, save, compare.

Everything lands in one output folder: the cached baseline (``baseline.safetensors`` + ``baseline.json``;
reused when seed and epochs match), the resumable search checkpoint, the pruned checkpoint
(``pruned.safetensors``), ``summary.json`` and, with matplotlib installed, ``sensitivity.png`` and
``thresholds.png``.

With ``distill=True`` the pruned model is also fine-tuned with the ``kd_loss`` mode, distilled from the
unpruned baseline (``distilled.safetensors``), from the same start and with the same epochs, optimiser
and batches as the plain fine-tune. The mode is applied by name: it comes from the ``modeopt-distill``
plugin through its entry point, and FastNAS does not import it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from modeopt_autonas.space import get_search_space
from modeopt_core import (
    ConfigError,
    ForwardProfiler,
    apply_mode,
    export,
    list_modes,
    make_forward_loop,
    plugin_failures,
    recalibrate_batchnorm,
    restore,
    save,
)

from .api import prune
from .digits import DigitsResNet, accuracy, digits_loaders, train_epochs
from .plots import have_matplotlib, plot_sensitivity_map, plot_thresholds

__all__ = ["DISTILL_CONFIG", "DemoResult", "distil", "format_table", "require_distill", "run_demo"]

_log = logging.getLogger(__name__)

_BASELINE_EPOCHS = 8
_CALIBRATION_BATCHES = 8
_LATENCY_BATCH = 256
_FINETUNE_LR = 0.01

#: the ``kd_loss`` config of ``modeopt demo --distill`` and ``bench/distill_digits.py``: the lowest validation
#: cross entropy of ``bench/distill_digits.py --tune`` (T in 1, 2, 4, 8 x three loss weightings, 3 seeds)
DISTILL_CONFIG: dict[str, Any] = {"temperature": 2.0, "student_loss_weight": 0.5, "pairs": [{"weight": 0.5}]}


@dataclass
class DemoResult:
    """What the demo measured: one row per model state, plus the search figures and written files."""

    rows: dict[str, dict[str, float]]
    search: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


def _latency_ms(model: nn.Module, runs: int = 10) -> float:
    """Best-of-10 CPU latency of one batch of 256 digits (eval mode, no grad, after warm-up)."""
    x = torch.rand(_LATENCY_BATCH, 1, 8, 8)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(runs + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(1e3 * (time.perf_counter() - start))
    model.train(was_training)
    return min(times)  # best of N: the least disturbed run on a shared CPU


def _counts(model: nn.Module) -> tuple[int, int]:
    counts = ForwardProfiler(model, torch.zeros(1, 1, 8, 8)).measure(("flops", "params"))
    return int(counts["flops"]), int(counts["params"])


def _baseline(out: Path, seed: int, epochs: int, train: Any, val: Any) -> tuple[nn.Module, bool]:
    """The trained baseline, from the cache in ``out`` when it was trained with the same settings."""
    path, meta_path = out / "baseline.safetensors", out / "baseline.json"
    wanted = {"seed": seed, "epochs": epochs, "widths": [32, 64, 128]}
    if path.exists() and meta_path.exists():
        try:
            cached = json.loads(meta_path.read_text())
        except ValueError:
            cached = None
        if isinstance(cached, dict) and {k: cached.get(k) for k in wanted} == wanted:
            _log.info("using the cached baseline %s", path)
            return restore(DigitsResNet(), path), True
    torch.manual_seed(seed)
    model = DigitsResNet()
    _log.info("training the baseline DigitsResNet for %d epochs", epochs)
    train_epochs(model, train, epochs)
    save(model, path)
    meta_path.write_text(json.dumps({**wanted, "val_accuracy": accuracy(model, val)}, indent=2))
    return model, False


def _row(model: nn.Module, val: Any, path: Path | None) -> dict[str, float]:
    flops, params = _counts(model)
    return {
        "accuracy": accuracy(model, val),
        "flops": flops,
        "params": params,
        "latency_ms": _latency_ms(model),
        "file_bytes": path.stat().st_size if path is not None and path.exists() else float("nan"),
    }


def _score_visited(model: nn.Module, visited: list[dict[str, Any]], val: Any, calib: Any) -> None:
    """Measure the real accuracy of every subnet the binary search visited (BN re-estimated for each)."""
    space = get_search_space(model)
    chosen = space.config()
    for entry in visited:
        space.select(entry["subnet"], strict=False)
        recalibrate_batchnorm(model, calib)
        entry["score"] = accuracy(model, val)
    space.select(chosen)
    recalibrate_batchnorm(model, calib)


def require_distill() -> None:
    """Raise a ``ConfigError`` saying how to install the distillation plugin unless ``kd_loss`` is available."""
    if "kd_loss" in list_modes():
        return
    failed = [f for f in plugin_failures() if f.distribution == "modeopt-distill"]
    if failed:
        raise ConfigError(f"distillation needs the kd_loss mode: the modeopt-distill plugin is installed but failed "
                          f"to load ({failed[0].error}); `modeopt plugins` shows the details")
    raise ConfigError(
        "distillation needs the kd_loss mode of the modeopt-distill plugin, which is not installed (or not enabled "
        "by MODEOPT_PLUGINS): pip install -e plugins/distill in a checkout of modeopt (pip install modeopt-distill "
        "otherwise), then `modeopt plugins` lists it"
    )


def _finetune(model: nn.Module, epochs: int, seed: int, loss_fn: Any = None) -> None:
    train, _ = digits_loaders(seed=0)  # a fresh loader: every fine-tune sees the same batches in the same order
    torch.manual_seed(seed)
    train_epochs(model, train, epochs, lr=_FINETUNE_LR, loss_fn=loss_fn)


def distil(student: nn.Module, teacher: nn.Module, epochs: int, seed: int = 0,
           config: dict[str, Any] | None = None) -> nn.Module:
    """Fine-tune ``student`` for ``epochs`` with ``kd_loss`` from ``teacher`` (the demo's recipe); return it exported.

    The loss of every step is ``student.compute_kd_loss(student_loss=cross_entropy)``: the method the
    mode adds to the model, so nothing here imports the distillation plugin.
    """
    require_distill()
    student = apply_mode(student, [("kd_loss", dict(config or DISTILL_CONFIG))], mode_kwargs={"teacher": teacher})
    kd_loss = cast(Callable[..., torch.Tensor], student.compute_kd_loss)  # added by the mode
    _finetune(student, epochs, seed, lambda out, y: kd_loss(student_loss=F.cross_entropy(out, y)))
    return export(student)  # export_student: the plain pruned model, teacher and hooks gone


def run_demo(
    out: str | os.PathLike[str] = "modeopt-demo",
    *,
    flops: str | float | None = "50%",
    params: str | float | None = None,
    seed: int = 0,
    epochs: int = _BASELINE_EPOCHS,
    finetune_epochs: int = 3,
    distill: bool = False,
    verbose: bool = True,
) -> DemoResult:
    """Run the whole demo (see the module doc); return the measurements."""
    if distill:
        require_distill()  # before hours of work, not after
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    train, val = digits_loaders(seed=0)  # a fixed split: numbers stay comparable across seeds
    model, cached = _baseline(folder, seed, epochs, train, val)
    rows = {"baseline": _row(model, val, folder / "baseline.safetensors")}

    constraints = {k: v for k, v in (("flops", flops), ("params", params)) if v is not None}
    if cached is False:  # a retrained baseline makes an old sensitivity map meaningless
        (folder / f"search-seed{seed}.ckpt").unlink(missing_ok=True)
    start = time.perf_counter()
    model, results = prune(
        model,
        constraints,
        torch.zeros(1, 1, 8, 8),
        {
            "score_func": lambda m: accuracy(m, val),
            "data_loader": train,
            "max_iter_data_loader": _CALIBRATION_BATCHES,
            "checkpoint": str(folder / f"search-seed{seed}.ckpt"),
            "verbose": verbose,
        },
    )
    search_s = time.perf_counter() - start
    calib = make_forward_loop(train, max_batches=_CALIBRATION_BATCHES)
    visited = [dict(v) for v in results["thresholds_visited"]]
    _score_visited(model, visited, val, calib)

    model = export(model)  # plain, smaller modules: counted and timed as deployed
    rows["pruned"] = _row(model, val, None)
    start_weights = copy.deepcopy(model) if distill else None
    _finetune(model, finetune_epochs, seed)
    pruned_path = folder / "pruned.safetensors"
    save(model, pruned_path)
    rows["fine-tuned"] = _row(model, val, pruned_path)
    rows["pruned"]["file_bytes"] = rows["fine-tuned"]["file_bytes"]  # same tensors, other values
    files = {"baseline": str(folder / "baseline.safetensors"), "pruned": str(pruned_path)}
    if start_weights is not None:
        teacher = restore(DigitsResNet(), folder / "baseline.safetensors").eval()  # the unpruned model
        distilled = distil(start_weights, teacher, finetune_epochs, seed)
        files["distilled"] = str(folder / "distilled.safetensors")
        save(distilled, files["distilled"])
        rows["distilled"] = _row(distilled, val, Path(files["distilled"]))

    if have_matplotlib():
        files["sensitivity_plot"] = str(plot_sensitivity_map(results["sensitivity_map"], folder / "sensitivity.png",
                                                             score_name="accuracy (%)"))
        limit = results["constraints"]["limits"].get("flops")
        files["thresholds_plot"] = str(plot_thresholds(visited, results["flops"]["before"], folder / "thresholds.png",
                                                       flops_limit=limit, score_name="accuracy (%)",
                                                       original_score=results["original_score"]))
    else:
        _log.info("matplotlib is not installed: plots skipped (pip install matplotlib)")
    search = {
        "constraints": results["constraints"]["spec"],
        "subnet": results["subnet"],
        "search_s": search_s,
        "sensitivity_s": results["timings"]["sensitivity_s"],
        "binary_search_s": results["timings"].get("binary_search_s", 0.0),
        "num_score_evals": results["num_score_evals"],
        "resumed": results["resumed"],
        "thresholds_visited": visited,
        "baseline_cached": cached,
        "finetune_epochs": finetune_epochs,
        **({"distill_config": DISTILL_CONFIG} if distill else {}),
    }
    summary = folder / "summary.json"
    summary.write_text(json.dumps({"rows": rows, "search": search}, indent=2, default=float))
    files["summary"] = str(summary)
    return DemoResult(rows, search, files)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def format_table(result: DemoResult) -> str:
    """The before/after table (accuracy, FLOPs, params, CPU latency, file size) as text."""
    base = result.rows["baseline"]
    header = ("model", "val acc", "FLOPs", "params", f"latency (b{_LATENCY_BATCH})", "file")
    lines = [header]
    for name, row in result.rows.items():
        pct = {k: "" if name == "baseline" else f" ({100 * row[k] / base[k]:.0f}%)" for k in ("flops", "params")}
        size = "-" if math.isnan(row["file_bytes"]) else f"{row['file_bytes'] / 1024:.0f} KiB"
        lines.append((
            name,
            f"{row['accuracy']:.2f}%",
            _si(row["flops"]) + pct["flops"],
            _si(row["params"]) + pct["params"],
            f"{row['latency_ms']:.1f} ms",
            size,
        ))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    s = result.search
    if "distilled" in result.rows:
        gain = result.rows["distilled"]["accuracy"] - result.rows["fine-tuned"]["accuracy"]
        text.append("")
        text.append(f"distilled vs fine-tuned: {gain:+.2f} points of val accuracy after {s['finetune_epochs']} epochs "
                    "each (same pruned start, optimiser, batches; kd_loss from the unpruned baseline)")
    text.append("")
    text.append(
        f"search: {s['num_score_evals']} score evaluations, sensitivity map {s['sensitivity_s']:.1f} s, binary search "
        f"{1e3 * s['binary_search_s']:.1f} ms, {len(s['thresholds_visited'])} thresholds visited"
        + (" (resumed from checkpoint)" if s["resumed"] else "")
    )
    text.extend(f"{k}: {v}" for k, v in result.files.items())
    return "\n".join(text)
