"""``meet_latency_limit`` and ``refit_through`` on a real latency model (deterministic op-cost timer)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import LatencyModel, get_search_space, meet_latency_limit
from modeopt_autonas.space.latency.verification import refit_through
from modeopt_core import ConstraintError
from tests._fake_timer import OpCostTimer
from tests.fastnas._models import INPUT_SHAPE, tiny_cnn

FAST = {"runs": 1, "warmup": 0, "calibration_runs": 1, "report_runs": 1}
SMALL = {"conv1.out_channels": 8, "conv2.out_channels": 8, "conv3.out_channels": 16}


def _model(tmp_path: Path) -> LatencyModel:
    space = get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"]))
    timer = OpCostTimer(activation_element_s=2e-8)
    return LatencyModel.build(space, torch.zeros(INPUT_SHAPE), timer=timer, cache_dir=tmp_path, **FAST)


def test_refit_passes_through_the_reference_and_the_point(tmp_path: Path) -> None:
    model = _model(tmp_path)
    original = model.original_config()
    assert refit_through(model, SMALL, 0.5 * model.reference_ms)
    assert model.latency(SMALL) == pytest.approx(0.5 * model.reference_ms, rel=1e-9)
    assert model.latency(original) == pytest.approx(model.reference_ms, rel=1e-9)
    # no line with a positive slope: not faster than the original, or the original itself
    slope = model.slope
    assert not refit_through(model, SMALL, 1.2 * model.reference_ms)
    assert not refit_through(model, original, 0.5 * model.reference_ms)
    assert model.slope == slope and len(model.calibration["refits"]) == 1


def test_a_limit_nothing_fits_after_the_refit_keeps_the_model_and_the_choice(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path)
    line = (model.slope, model.offset)
    measured = model.measure([model.original_config(), SMALL], runs=1)
    limit = 0.99 * measured[1] / measured[0] * model.reference_ms  # the measurement misses it by 1%
    calls = []

    def choose() -> dict[str, int]:
        calls.append((model.slope, model.offset))
        if len(calls) == 1:
            raise ConstraintError("nothing fits")
        return dict(SMALL)

    with caplog.at_level("WARNING"):
        check = meet_latency_limit(model, limit, SMALL, choose, rounds=3)
    assert not check["met"] and check["subnet"] == SMALL and check["chosen_round"] == 0
    assert check["rounds"][0]["no_subnet_after_refit"] and len(check["rounds"]) == 1
    assert calls[0] != line and calls[1] == line == (model.slope, model.offset)  # refitted, then put back
    assert "not met" in caplog.text


def _exhaustive(model: LatencyModel, limit: float) -> Callable[[], dict[str, int]]:
    """A search over every subnet: the one predicted slowest within the limit (ties: the first)."""
    hps = dict(model._space.named_hparams(True))
    names = list(hps)
    configs = [dict(zip(names, c)) for c in itertools.product(*[hps[n].choices for n in names])]

    def choose() -> dict[str, int]:
        fits = [c for c in configs if model.latency(c) <= limit]
        if not fits:
            raise ConstraintError("nothing fits")
        return max(fits, key=model.latency)

    return choose


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_measured_choices_close_in_on_the_limit(fraction: float, tmp_path: Path) -> None:
    model = LatencyModel.build(get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"])), torch.zeros(INPUT_SHAPE),
                               timer=OpCostTimer(activation_element_s=1e-7), cache_dir=tmp_path, **FAST)
    limit = fraction * model.reference_ms
    choose = _exhaustive(model, limit)
    check = meet_latency_limit(model, limit, choose(), choose, rounds=4)
    rounds = check["rounds"]
    assert len(rounds) > 1  # this timer makes the first prediction miss or fall far below the limit
    hits = [r for r in rounds if r["met"]]
    assert check["met"] and rounds[check["chosen_round"]] is max(hits, key=lambda r: r["at_reference_ms"])
    assert choose() == check["subnet"]  # the model keeps the line under which the search picks the result
    assert model.latency(check["subnet"]) == pytest.approx(rounds[check["chosen_round"]]["predicted_ms"], rel=1e-12)
    # every refit passes exactly through the two measured points it was fitted on
    for refit in model.calibration["refits"]:
        slope, offset = refit["after"]
        for raw, ms in refit["through"]:
            assert slope * raw + offset == pytest.approx(ms, rel=1e-9)
    # the result is as large as the measurements allow: no measured hit is slower
    assert rounds[check["chosen_round"]]["at_reference_ms"] >= rounds[0]["at_reference_ms"] or not rounds[0]["met"]


def test_without_any_hit_the_closest_miss_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = LatencyModel.build(get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"])), torch.zeros(INPUT_SHAPE),
                               timer=OpCostTimer(activation_element_s=1e-7), cache_dir=tmp_path, **FAST)
    smallest = {n: hp.min for n, hp in model._space.named_hparams(True)}
    measured = model.measure([model.original_config(), smallest], runs=1)
    limit = 0.98 * measured[1] / measured[0] * model.reference_ms  # even the smallest subnet misses as measured
    choose = _exhaustive(model, 10 * limit)  # a search that believes far more fits than does
    with caplog.at_level("WARNING"):
        check = meet_latency_limit(model, limit, choose(), choose, rounds=4)
    rounds = check["rounds"]
    assert not check["met"] and not any(r["met"] for r in rounds) and len(rounds) > 1
    assert rounds[check["chosen_round"]] is min(rounds, key=lambda r: r["at_reference_ms"])
    assert choose() == check["subnet"] and "not met" in caplog.text


class _DriftingTimer(OpCostTimer):
    """The op-cost timer on a machine whose speed changes from one round (two timed calls) to the next,
    with two bursts of load that slow one call of a round alone."""

    FACTORS = (1.0, 3.0, 1.5, 0.7, 2.5, 1.2, 4.0, 0.9)
    BURSTS = {3: 5.0, 10: 6.0}  # timed call index -> extra slowdown

    def __call__(self, fn: Callable[[], Any]) -> float:
        factor = self.FACTORS[(self.calls // 2) % len(self.FACTORS)] * self.BURSTS.get(self.calls, 1.0)
        return factor * super().__call__(fn)


def test_a_check_measures_ratios_paired_by_round_on_a_drifting_machine(tmp_path: Path) -> None:
    steady_model = _model(tmp_path / "steady")
    steady = steady_model.measure([steady_model.original_config(), SMALL], runs=1)
    space = get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"]))
    timer = _DriftingTimer(activation_element_s=2e-8)
    model = LatencyModel.build(space, torch.zeros(INPUT_SHAPE), timer=timer, cache_dir=tmp_path / "drift", **FAST)
    timer.calls = 0  # rounds of two timed calls from here
    original_ms, small_ms = model.measure([model.original_config(), SMALL], runs=8)
    # each round's ratio is the steady one: so is their interquartile mean, whatever the machine did
    assert small_ms / original_ms == pytest.approx(steady[1] / steady[0], rel=1e-9)
    timer.calls = 0
    limit = 1.01 * steady[1] / steady[0] * model.reference_ms
    check = meet_latency_limit(model, limit, SMALL, lambda: SMALL, rounds=1)
    assert check["met"] and check["rounds"][0]["measured_ratio"] == pytest.approx(steady[1] / steady[0], rel=1e-9)
