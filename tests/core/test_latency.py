"""Latency measurement in the core: interleaved medians, timers, measure_latency, the latency constraint."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_core import (
    ConfigError,
    ConstraintError,
    Constraints,
    ForwardProfiler,
    LatencyStats,
    LatencyTimer,
    WallClockTimer,
)
from modeopt_core.sdk import device_name, model_device, time_interleaved


class ScriptedTimer:
    """Runs the callable and returns the next scripted duration (seconds)."""

    def __init__(self, durations: list[float]) -> None:
        self._durations: Iterator[float] = iter(durations)
        self.calls = 0

    def __call__(self, fn: Callable[[], Any]) -> float:
        self.calls += 1
        fn()
        return next(self._durations)


def test_interleaved_rounds_rotate_and_medians_are_per_callable() -> None:
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in "abc"}
    durations = [0.001 * i for i in range(1, 13)]  # 4 rounds x 3 callables, in call order
    stats = time_interleaved(fns, runs=4, warmup=2, timer=ScriptedTimer(durations))
    assert order[:6] == list("abcabc")  # warm-up rounds, untimed
    assert order[6:] == list("abc" "bca" "cab" "abc")
    # a's timed calls were the 1st, 6th, 8th and 10th: 1, 6, 8, 10 ms
    assert stats["a"].samples_ms == pytest.approx((1, 6, 8, 10))
    assert stats["a"].median_ms == pytest.approx(7.0) and stats["a"].min_ms == pytest.approx(1.0)
    assert stats["a"].spread == pytest.approx(9 / 7)
    assert list(stats) == ["a", "b", "c"]


def test_paired_ratio_cancels_load_that_hits_a_whole_round() -> None:
    # b always takes half of a's time in the same round, while the machine's speed moves by 5x between
    # rounds; in two rounds a burst of load slowed b alone, which the quartiles drop
    a = LatencyStats((10.0, 50.0, 20.0, 40.0, 10.0, 30.0, 20.0, 50.0))
    b = LatencyStats((45.0, 25.0, 10.0, 20.0, 45.0, 15.0, 10.0, 25.0))
    assert b.ratio_to(a) == pytest.approx(0.5)
    assert b.median_ms / a.median_ms == pytest.approx(0.9)  # the ratio of medians is moved by the bursts
    assert a.ratio_to(a) == pytest.approx(1.0)
    assert LatencyStats((3.0,)).ratio_to(LatencyStats((2.0,))) == pytest.approx(1.5)


def test_paired_ratio_needs_the_same_rounds() -> None:
    with pytest.raises(ConfigError, match="same rounds: 2 runs against 3"):
        LatencyStats((1.0, 2.0)).ratio_to(LatencyStats((1.0, 2.0, 3.0)))


@pytest.mark.parametrize(("runs", "warmup", "message"), [(0, 1, "runs=0"), (2, -1, "warmup=-1"), (True, 0, "runs=True")])
def test_bad_counts_are_config_errors(runs: Any, warmup: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        time_interleaved({0: lambda: None}, runs=runs, warmup=warmup)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_timer_returning_nonsense_is_an_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="must return a finite duration"):
        time_interleaved({0: lambda: None}, runs=1, warmup=0, timer=ScriptedTimer([bad]))


def test_wall_clock_timer_on_the_cpu() -> None:
    timer = WallClockTimer()
    assert isinstance(timer, LatencyTimer) and timer.device.type == "cpu"
    calls = []
    seconds = timer(lambda: calls.append(1))
    assert calls == [1] and 0.0 <= seconds < math.inf
    assert "cpu" in repr(timer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_wall_clock_timer_on_cuda_counts_queued_kernels() -> None:
    timer = WallClockTimer("cuda")
    a = torch.randn(2048, 2048, device="cuda")
    seconds = timer(lambda: [a @ a for _ in range(10)])
    assert seconds > 0.0 and "cuda" in device_name("cuda")


class _Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.lin(x) * scale


def test_measure_latency_runs_in_eval_and_inference_mode_and_restores_flags() -> None:
    model = _Probe().train()
    timer = ScriptedTimer([0.002, 0.004, 0.003])
    stats = mo.measure_latency(model, (torch.randn(2, 4), {"scale": 2.0}), runs=3, warmup=1, timer=timer)
    assert stats.median_ms == pytest.approx(3.0) and timer.calls == 3
    assert model.seen == [(False, True)] * 4 and model.training
    assert model_device(model).type == "cpu" and model_device(nn.ReLU()).type == "cpu"


def test_device_name_names_the_cpu_and_its_vector_unit() -> None:
    name = device_name()
    assert name.startswith("cpu: ") and torch.backends.cpu.get_cpu_capability() in name


@pytest.mark.parametrize(("spec", "normal"), [({"latency": "60%"}, {"latency": "60%"}),
                                              ({"latency": 12.5}, {"latency": 12.5}),
                                              ({"latency": 3, "flops": "50%", "params": 1e6},
                                               {"flops": "50%", "params": 1e6, "latency": 3})])
def test_latency_limits_parse_and_combine(spec: dict[str, Any], normal: dict[str, Any]) -> None:
    parsed = Constraints.parse(spec)
    assert parsed.to_dict() == normal and list(parsed.to_dict()) == list(normal)
    assert Constraints.parse(parsed.to_dict()) == parsed


@pytest.mark.parametrize("raw", ["fast", 0, -2.0, True])
def test_bad_latency_limits_name_milliseconds(raw: Any) -> None:
    with pytest.raises(ConstraintError, match=r"latency=12\.5 \(milliseconds\)"):
        Constraints.parse({"latency": raw})


def test_forward_profiler_times_the_model_for_a_latency_limit() -> None:
    model = _Probe()
    x = torch.randn(2, 4)
    profiler = ForwardProfiler(model, x, latency_runs=3, timer=ScriptedTimer([0.01, 0.03, 0.02] * 4))
    assert profiler.latency() == pytest.approx(20.0)
    values = profiler.measure(["flops", "latency"])
    assert values == {"flops": 2 * 2 * 4 * 4, "latency": pytest.approx(20.0)}
    constraints = Constraints.parse({"latency": "50%", "flops": "100%"}).resolve(profiler)
    assert constraints.limits == {"flops": 64, "latency": pytest.approx(10.0)}
    result = constraints.check(profiler)
    assert not result.satisfied and result.violated == ["latency"] and result.ratios["latency"] == pytest.approx(2.0)
