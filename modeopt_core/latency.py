"""Latency measurement: a timer protocol, interleaved medians, and the end-to-end latency of a model.

A :class:`LatencyTimer` runs a callable once and returns how long it took, in seconds. The default,
:class:`WallClockTimer`, uses ``time.perf_counter`` on the CPU and CUDA events between two device
synchronisations on a GPU (so queued kernels are counted, not just their launch). Tests and
simulations inject their own deterministic timer instead.

:func:`time_interleaved` times several callables round-robin after a warm-up, rotating which one goes
first in each round, so that a change of machine load during the measurement hits all of them alike;
it reports medians, and :meth:`LatencyStats.ratio_to` the paired ratio of two callables.
:func:`measure_latency` applies that to one model on a dummy input (eval mode,
``torch.inference_mode``), at the current ``torch.get_num_threads()``.

Latencies are in **milliseconds** throughout (the unit of the ``latency`` constraint).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from .constraints import unpack_dummy_input
from .errors import ConfigError

__all__ = [
    "LatencyStats",
    "LatencyTimer",
    "WallClockTimer",
    "device_name",
    "measure_latency",
    "model_device",
    "time_interleaved",
]

K = TypeVar("K", bound=Hashable)


@runtime_checkable
class LatencyTimer(Protocol):
    """Runs ``fn`` once and returns its duration in seconds."""

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Call ``fn()`` and return how many seconds it took."""
        ...


class WallClockTimer:
    """Wall-clock time of one call: ``perf_counter`` on CPU, CUDA events on a GPU.

    Args:
        device: where the timed work runs; a CUDA device is synchronised before the call and timed
            with a pair of CUDA events recorded around it. Default: the CPU.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._events: tuple[Any, Any] | None = None
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self._events is None:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = self._events
        torch.cuda.synchronize(self.device)  # earlier queued work must not count
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) / 1e3

    def __repr__(self) -> str:
        return f"WallClockTimer({str(self.device)!r})"


@dataclass(frozen=True)
class LatencyStats:
    """The timed runs of one callable (warm-up runs excluded), in milliseconds."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        """Median of the timed runs."""
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        """Fastest timed run."""
        return min(self.samples_ms)

    def ratio_to(self, reference: LatencyStats) -> float:
        """This callable's latency over ``reference``'s, from runs timed in the same rounds.

        The interquartile mean of the per-round ratios: a change of machine load slows both runs of a
        round alike, so each round's ratio cancels it where a ratio of medians does not, and the
        quartiles drop the rounds a burst of load hit between the two runs.
        """
        if len(reference.samples_ms) != len(self.samples_ms):
            raise ConfigError(f"ratio_to needs runs timed in the same rounds: {len(self.samples_ms)} runs against "
                              f"{len(reference.samples_ms)}; time both with one time_interleaved call")
        ratios = sorted(a / b if b > 0 else math.inf for a, b in zip(self.samples_ms, reference.samples_ms))
        cut = len(ratios) // 4
        middle = ratios[cut:len(ratios) - cut]
        return statistics.fmean(middle)

    @property
    def spread(self) -> float:
        """``(max - min) / median``: a quick noise indicator (0 for a single run)."""
        median = self.median_ms
        return (max(self.samples_ms) - min(self.samples_ms)) / median if median > 0 else 0.0


def _check_counts(runs: int, warmup: int) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"runs={runs!r} must be an int >= 1 (the number of timed runs per median)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} must be an int >= 0 (untimed runs before timing)")


def time_interleaved(
    fns: Mapping[K, Callable[[], Any]], runs: int, warmup: int = 1, timer: LatencyTimer | None = None
) -> dict[K, LatencyStats]:
    """Time every callable of ``fns`` ``runs`` times, round-robin, after ``warmup`` untimed rounds.

    Round ``i`` starts at the ``i``-th callable (mod their number), so none always runs right after
    the same neighbour. Returns the stats per key, in the order of ``fns``.
    """
    _check_counts(runs, warmup)
    timer = timer if timer is not None else WallClockTimer()
    keys = list(fns)
    for _ in range(warmup):
        for key in keys:
            fns[key]()
    samples: dict[K, list[float]] = {key: [] for key in keys}
    for i in range(runs):
        shift = i % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            seconds = float(timer(fns[key]))
            if not seconds >= 0.0 or seconds == float("inf"):
                raise ConfigError(f"timer {timer!r} returned {seconds!r} seconds; a timer must return a finite "
                                  "duration >= 0")
            samples[key].append(1e3 * seconds)
    return {key: LatencyStats(tuple(samples[key])) for key in keys}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without tensors)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def measure_latency(
    model: nn.Module, dummy_input: Any, runs: int = 20, warmup: int = 3, timer: LatencyTimer | None = None
) -> LatencyStats:
    """Latency of ``model(*dummy_input)`` in eval mode under ``torch.inference_mode`` (milliseconds).

    ``dummy_input`` follows the ``(args..., {kwargs})`` convention. Runs on the current thread
    count; every module's training flag is restored afterwards.
    """
    args, kwargs = unpack_dummy_input(dummy_input)
    timer = timer if timer is not None else WallClockTimer(model_device(model))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            return time_interleaved({0: lambda: model(*args, **kwargs)}, runs, warmup, timer)[0]
    finally:
        for module, flag in flags.items():
            module.training = flag


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str | None = None) -> str:
    """A name for the hardware latencies are measured on, e.g. ``"cpu: AMD EPYC (AVX2, 2 cores)"``.

    For a CUDA device: its name and compute capability. Used to key latency caches: measurements
    taken on one machine are never reused on a different one.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda: {torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    if dev.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        return f"cpu: {_cpu_model()} ({capability}, {os.cpu_count()} cores)"
    return dev.type
