"""Shared helpers of the benchmark scripts: timing (median after warm-up), threads, CPU probe, tables.

The machine these scripts were written for is a shared 2-core VM: every script prints a machine line
(torch version, threads, CPU model, load average) and a *CPU probe* (the median time of a fixed
matmul workload) at its start and end, so a reader can tell a quiet run from a disturbed one.
Wall-clock timings are reported as medians; where contention matters the process CPU time is shown
next to them (it does not count time spent waiting for a core).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Timing",
    "add_common_args",
    "cpu_model",
    "cpu_probe_ms",
    "digits_baseline",
    "finetune_accuracies",
    "fmt_bytes",
    "fmt_count",
    "load_average",
    "machine_line",
    "markdown_table",
    "measure",
    "measure_interleaved",
    "reproduce_line",
    "set_threads",
]


@dataclass
class Timing:
    """Wall-clock and process-CPU seconds of the timed runs (warm-up runs excluded)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def spread(self) -> float:
        """(max - min) / median of the wall times: a quick noise indicator."""
        return (max(self.wall) - min(self.wall)) / self.median if self.median > 0 else 0.0


def _timed(fn: Callable[[], Any], into: Timing) -> Any:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    into.wall.append(time.perf_counter() - w0)
    into.cpu.append(time.process_time() - c0)
    return out


def measure(fn: Callable[[], Any], runs: int, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(runs):
        _timed(fn, timing)
    return timing


def measure_interleaved(fns: Mapping[str, Callable[[], Any]], runs: int, warmup: int = 1) -> dict[str, Timing]:
    """Time several functions round-robin (rotating who goes first), so they share the machine's load."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    timings = {name: Timing() for name in names}
    for i in range(runs):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            _timed(fns[name], timings[name])
    return timings


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and one inter-op thread where torch still allows setting it)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; harmless otherwise
        pass


_PROBE_A = None


def cpu_probe_ms(repeats: int = 7) -> float:
    """Median milliseconds of a fixed workload (10 matmuls of 256x256 fp32 on the current threads)."""
    global _PROBE_A
    if _PROBE_A is None:
        _PROBE_A = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    a = _PROBE_A

    def work() -> None:
        b = a
        for _ in range(10):
            b = torch.mm(a, b).tanh_()

    return 1e3 * measure(work, repeats, warmup=2).median


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's machine string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``"2.10 3.05 4.00"``."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line(threads: int) -> str:
    """One line describing where the figures were taken."""
    return (
        f"machine: {os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, {threads} thread(s), "
        f"python {platform.python_version()}, load average {load_average()}, "
        f"CPU probe {cpu_probe_ms():.1f} ms"
    )


def reproduce_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``reproduce: .venv/bin/python bench/<script> <args>`` for the arguments actually given."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "reproduce: " + shlex.join([".venv/bin/python", f"bench/{script}", *args])


def add_common_args(parser: argparse.ArgumentParser, runs: int) -> None:
    """``--quick`` (tiny sizes, for the smoke test), ``--threads`` (default 2), ``--runs``."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few runs (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per figure (default {runs})")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` holds one of ``l``/``r`` per column (default: l, then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def fmt_count(value: float) -> str:
    """1234567 -> ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def fmt_bytes(value: float) -> str:
    """Bytes in KiB/MiB/GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def digits_baseline(
    epochs: int,
    seed: int = 0,
    cache: str | None = None,
    widths: tuple[int, int, int] = (32, 64, 128),
    image_size: int = 8,
    lr: float = 0.05,
) -> tuple[Any, float | None]:
    """The digits CNN trained for ``epochs`` (seed ``seed``) and the training seconds (None: from the cache).

    Trained models are cached as modeopt checkpoints in ``cache`` (default ``~/.cache/modeopt-bench``),
    so the search and quality benchmarks share one baseline.
    """
    import modeopt_core as mo
    from modeopt_fastnas.digits import DigitsResNet, digits_loaders, train_epochs

    folder = Path(cache or os.environ.get("MODEOPT_BENCH_CACHE", Path.home() / ".cache" / "modeopt-bench"))
    size = "" if image_size == 8 else f"-{image_size}px"
    rate = "" if lr == 0.05 else f"-lr{lr:g}"
    path = folder / f"digits-resnet{'-'.join(map(str, widths))}{size}-seed{seed}-ep{epochs}{rate}.safetensors"
    if path.exists():
        return mo.restore(DigitsResNet(widths), path), None
    torch.manual_seed(seed)
    model = DigitsResNet(widths)
    train, _ = digits_loaders(seed=0, image_size=image_size)
    start = time.perf_counter()
    train_epochs(model, train, epochs, lr=lr)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    mo.save(model, path)
    return model, seconds


def finetune_accuracies(model: Any, train_set: Any, val: Any, epochs: int, shuffles: int,
                        lr: float = 0.01) -> list[float]:
    """Validation accuracy after fine-tuning a copy of ``model`` for ``epochs`` on each of ``shuffles``
    orders of ``train_set`` (batches of 64; order ``k`` is seeded ``k``, order 0 is ``digits_loaders``')."""
    import copy

    from torch.utils.data import DataLoader

    from modeopt_fastnas.digits import accuracy, train_epochs

    out = []
    for k in range(shuffles):
        tuned = copy.deepcopy(model)
        loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(k))
        train_epochs(tuned, loader, epochs, lr=lr)
        out.append(accuracy(tuned, val))
    return out
