"""Search time: FastNAS (digits CNN to 50% FLOPs, ResNet-18 to 60%) and AutoNAS evolutionary search per iteration.

* ``fastnas-digits``: the digits CNN trained for ``--epochs`` (cached, see ``_common.digits_baseline``),
  pruned with ``modeopt_fastnas.prune`` to each budget; score = validation accuracy, BN statistics
  re-estimated from the first 8 training batches before every score evaluation (as ``modeopt demo`` does, in a fixed order).
  Median of ``--runs`` searches (no search checkpoint: every run builds its sensitivity map).
* ``fastnas-resnet18``: runs FastNAS's own ``bench/fastnas_resnet18.py`` (random weights,
  data-free output-agreement score) and reports its figures.
* ``autonas``: ``EvolveSearcher`` (the ``autonas`` default) for ``--iters`` iterations on the digits
  CNN (score = validation accuracy, 8 calibration batches) and on ResNet-18 (output agreement on one
  8x3x64x64 batch, 8 random calibration batches), both to 50% FLOPs; time per iteration split into
  BN calibration, scoring and the rest (sampling, analytic constraint checks, checkpoint-free
  bookkeeping).

    .venv/bin/python bench/search_time.py [--parts fastnas-digits,fastnas-resnet18,autonas] [--runs 3]
                                          [--iters 20] [--resnet18-args "--size 128"] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torchvision
from _common import (
    add_common_args,
    digits_baseline,
    machine_line,
    markdown_table,
    reproduce_line,
    set_threads,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeopt_core as mo
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders

_PARTS = ("fastnas-digits", "fastnas-resnet18", "autonas")
_CALIBRATION_BATCHES = 8


def _fastnas_digits(budgets: list[str], runs: int, epochs: int, cache: str | None, quick: bool) -> list[list[str]]:
    # --quick: a narrow CNN, BN re-estimated only for the result (the machinery, not the figures)
    widths = (8, 16, 16) if quick else (32, 64, 128)
    baseline, _ = digits_baseline(epochs, cache=cache, widths=widths)
    train, val = digits_loaders(seed=0)
    x, y = train.dataset.tensors  # type: ignore[attr-defined]
    calib_loader = DataLoader(TensorDataset(x, y), batch_size=train.batch_size)  # fixed batches: repeatable runs
    calibration = "final" if quick else "each"
    rows = []
    for budget in budgets:
        results = []
        for _ in range(runs):
            start = time.perf_counter()
            _, res = prune(copy.deepcopy(baseline), {"flops": budget}, torch.zeros(1, 1, 8, 8), {
                "score_func": lambda m: accuracy(m, val), "data_loader": calib_loader, "bn_calibration": calibration,
                "max_iter_data_loader": _CALIBRATION_BATCHES, "verbose": False})
            results.append((time.perf_counter() - start, res))
        med = {k: statistics.median(r["timings"].get(k, 0.0) for _, r in results)
               for k in ("setup_s", "sensitivity_s", "binary_search_s", "final_calibration_s")}
        res = results[0][1]
        rows.append([
            "digits CNN" + (f" {widths}" if quick else ""), budget, f"{med['setup_s']:.2f}", f"{med['sensitivity_s']:.2f}",
            f"{1e3 * med['binary_search_s']:.1f} ({res['iterations']} steps)",
            f"{statistics.median(t for t, _ in results):.2f}", str(res["num_score_evals"]),
            f"{len(res['pruned_hparams'])}", f"{100 * res['flops_ratio']:.1f}%",
            f"{res['original_score']:.2f} -> {res['best']['score']:.2f}" if res.get("best") else "-",
        ])
    return rows


_RESNET18_FIGURES = {
    "setup": r"sort \+ original score\s+([\d.]+) s",
    "sensitivity": r"sensitivity map\s+([\d.]+) s",
    "binary": r"binary search\s+([\d.]+) ms \((\d+) steps\)",
    "total": r"search total\s+([\d.]+) s",
    "evals": r"score evaluations\s+(\d+) \((\d+) hparams\)",
    "flops": r"FLOPs\s+[\d,]+ -> [\d,]+ \(([\d.]+)%\)",
    "score": r"output agreement\s+1.0 -> ([-\d.]+)",
    "budget": r"-> (\S+) FLOPs",
}


def _fastnas_resnet18(extra_args: list[str]) -> tuple[list[list[str]], str]:
    """Run FastNAS's own ResNet-18 benchmark; return its figures as a table row and its output."""
    script = Path(__file__).with_name("fastnas_resnet18.py")
    proc = subprocess.run([sys.executable, str(script), "--quiet", *extra_args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    found = {k: re.search(p, proc.stdout) for k, p in _RESNET18_FIGURES.items()}
    missing = [k for k, m in found.items() if m is None]
    if missing:
        raise RuntimeError(f"{script.name} output lacks {missing}; its format changed:\n{proc.stdout}")
    g = {k: m.groups() for k, m in found.items() if m is not None}
    row = [
        "resnet18 (random weights)", g["budget"][0], g["setup"][0], g["sensitivity"][0],
        f"{g['binary'][0]} ({g['binary'][1]} steps)", g["total"][0], g["evals"][0], g["evals"][1],
        f"{g['flops'][0]}%", f"1.0 -> {g['score'][0]} (agreement)",
    ]
    return [row], proc.stdout.strip()


class _Clock:
    """Accumulates the seconds spent inside wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _calibration_loop(batches: Iterable[torch.Tensor]) -> Callable[[nn.Module], None]:
    inputs = list(batches)

    def loop(model: nn.Module) -> None:
        for x in inputs:
            model(x)

    return loop


def _autonas_row(name: str, model: nn.Module, dummy: torch.Tensor, score: Callable[[nn.Module], float],
                 calib: Callable[[nn.Module], None], iters: int, batches: int) -> list[str]:
    model = mo.apply_mode(model, ["autonas"])
    score_clock, calib_clock = _Clock(), _Clock()
    start = time.perf_counter()
    _, res = mo.search(model, {"flops": "50%"}, dummy, {
        "score_func": score_clock.wrap(score), "forward_loop": calib_clock.wrap(calib), "num_iters": iters,
        "min_calibration_batches": batches, "verbose": False})
    total = time.perf_counter() - start
    n = max(res["iterations"], 1)
    other = total - score_clock.seconds - calib_clock.seconds
    best = res["best"]["score"] if res.get("best") else float("nan")
    return [
        name, str(res["iterations"]), f"{total:.2f}", f"{1e3 * total / n:.0f}", f"{1e3 * calib_clock.seconds / n:.0f}",
        f"{1e3 * score_clock.seconds / n:.0f}", f"{1e3 * other / n:.0f}", str(res["num_evaluated"]), f"{best:.3f}",
    ]


def _autonas(iters: int, quick: bool) -> list[list[str]]:
    torch.manual_seed(0)
    batches = 2 if quick else _CALIBRATION_BATCHES
    train, val = digits_loaders(seed=0)
    calib = _calibration_loop([x for x, _ in list(train)[:batches]])
    rows = [_autonas_row("digits CNN", DigitsResNet(), torch.zeros(1, 1, 8, 8), lambda m: accuracy(m, val), calib,
                         iters, batches)]
    size, batch = (32, 2) if quick else (64, 8)
    resnet = torchvision.models.resnet18(weights=None).eval()
    score = OutputAgreement(resnet, random_inputs((batch, 3, size, size), num_batches=1))
    calib = _calibration_loop(random_inputs((batch, 3, size, size), num_batches=batches, seed=1))
    rows.append(_autonas_row(f"resnet18 ({batch}x3x{size}x{size})", resnet, torch.zeros(1, 3, size, size), score,
                             calib, max(2, iters // 2), batches))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--parts", default=",".join(_PARTS), help="comma-separated: " + ", ".join(_PARTS))
    parser.add_argument("--budgets", default="50%", help="FastNAS digits FLOPs budgets (default 50%%)")
    parser.add_argument("--epochs", type=int, default=5, help="digits baseline training epochs (default 5)")
    parser.add_argument("--iters", type=int, default=20, help="AutoNAS iterations on the digits CNN (default 20; "
                        "ResNet-18 gets half)")
    parser.add_argument("--resnet18-args", default="", help="extra arguments for bench/fastnas_resnet18.py")
    parser.add_argument("--cache", default=None, help="digits baseline cache folder")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(_PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(_PARTS)}")
    runs = 1 if args.quick else args.runs
    epochs = 1 if args.quick else args.epochs
    iters = 2 if args.quick else args.iters
    resnet18_args = [*shlex.split(args.resnet18_args), "--threads", str(args.threads)]
    if args.quick:
        resnet18_args += ["--size", "32", "--batches", "1", "--batch-size", "2"]
    print("# Search time\n")
    print(machine_line(args.threads) + "\n")
    fastnas_rows: list[list[str]] = []
    resnet18_output = ""
    if "fastnas-digits" in parts:
        fastnas_rows += _fastnas_digits(args.budgets.split(","), runs, epochs, args.cache, args.quick)
    if "fastnas-resnet18" in parts:
        rows, resnet18_output = _fastnas_resnet18(resnet18_args)
        fastnas_rows += rows
    if fastnas_rows:
        print(f"## FastNAS (digits: median of {runs} searches; baseline trained {epochs} epochs)\n")
        print(markdown_table(
            ["model", "FLOPs budget", "setup s", "sensitivity map s", "binary search ms", "total s",
             "score evals", "pruned hparams", "FLOPs kept", "score before -> after"],
            fastnas_rows, align="ll" + "r" * 7 + "l"))
        print("\nsetup = importance sort + original score; total = the whole prune() call (digits: incl. final "
              "BN calibration). digits score = val accuracy (%), BN re-estimated per evaluation.")
    if resnet18_output:
        print("\nbench/fastnas_resnet18.py output:\n\n```\n" + resnet18_output + "\n```")
    if "autonas" in parts:
        print(f"\n## AutoNAS evolutionary search to 50% FLOPs ({iters} iterations on the digits CNN, "
              f"{max(2, iters // 2)} on ResNet-18; untrained supernets)\n")
        print(markdown_table(
            ["model", "iterations", "total s", "ms / iter", "BN calibration ms / iter", "score ms / iter",
             "other ms / iter", "evaluated", "best score"],
            _autonas(iters, args.quick)))
        print(f"\nBN calibration = {2 if args.quick else _CALIBRATION_BATCHES} forward batches per candidate; other = sampling, "
              "analytic FLOPs checks, selection and bookkeeping.")
    print("\n" + machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("search_time.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
