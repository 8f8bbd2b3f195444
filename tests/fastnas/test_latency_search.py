"""FastNAS with a ``latency`` budget: results, exactness over non-monotone predictions, combined limits.

Latencies come from a deterministic op-cost timer (``tests/_fake_timer.py``): a narrower layer can be
slower than a wider one, and the prediction equals the "measured" latency of the export, so every
claim below is exact. The search is compared with a brute-force scan over the same pruning order.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import LatencyModel, SubnetProfiler, get_search_space
from modeopt_core import ConfigError, ConstraintError
from modeopt_fastnas import prune
from modeopt_fastnas.latency import bisectable_thresholds, drop_slower_choices
from modeopt_fastnas.sensitivity import pruning_keys, subnet_for_threshold, threshold_candidates
from tests._fake_timer import OpCostTimer
from tests.fastnas._models import INPUT_SHAPE, WidthScore, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)
C1, C2, C3 = "conv1.out_channels", "conv2.out_channels", "conv3.out_channels"
FAST = {"runs": 1, "warmup": 0, "calibration_runs": 1, "report_runs": 1}


def _score() -> WidthScore:
    return WidthScore({C1: lambda w: (16 - w) * 1.0, C2: lambda w: (32 - w) * 0.3, C3: lambda w: (64 - w) * 0.2})


def _options(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"timer": OpCostTimer(), "cache_dir": tmp_path, **FAST, **extra}


def _prune(tmp_path: Path, constraints: dict[str, Any], **config: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    options = config.pop("latency_options", {})
    return prune(mo.apply_mode(tiny_cnn(), ["fastnas"]), constraints, DUMMY, {
        "score_func": _score(), "verbose": False, "latency_options": _options(tmp_path, **options), **config})


def _brute_force(model: torch.nn.Module, res: dict[str, Any], constraints: dict[str, Any],
                 tmp_path: Path) -> tuple[dict[str, int], list[float]]:
    """The subnet of the lowest threshold (over the same pruning order) meeting every constraint,
    found by scanning all of them, and the predicted latency along that order."""
    space = get_search_space(model)
    widest = {n: hp.max for n, hp in space.named_hparams(True)}
    counts = SubnetProfiler(space, DUMMY)
    latency = LatencyModel.build(space, DUMMY, **_options(tmp_path))  # the cached table: same numbers
    assert latency.stats["measured"] == 0
    keys = pruning_keys(res["sensitivity_map"], lambda n, c: counts.flops({**widest, n: c}))
    skipped = res["latency"]["slower_widths_skipped"]
    keys = {n: {c: k for c, k in by.items() if c not in skipped.get(n, [])} for n, by in keys.items()}
    parsed = mo.Constraints.parse(constraints)
    reference = {"flops": counts.flops(widest), "params": counts.params(widest), "latency": latency.latency(widest)}
    limits = {n: (float(str(v).rstrip("%")) / 100 * reference[n] if isinstance(v, str) else v)
              for n, v in parsed.to_dict().items()}
    along = []
    found = None
    for t in threshold_candidates(keys):
        subnet = {**widest, **subnet_for_threshold(keys, t)}
        values = {"flops": counts.flops(subnet), "params": counts.params(subnet), "latency": latency.latency(subnet)}
        along.append(values["latency"])
        if found is None and all(values[n] <= lim * (1 + 1e-12) for n, lim in limits.items()):
            found = subnet
    assert found is not None
    return found, along


def test_prune_to_a_latency_budget(tmp_path: Path) -> None:
    model, res = _prune(tmp_path, {"latency": "60%"})
    lat = res["latency"]
    assert lat["unit"] == "ms" and lat["after"] <= 0.6 * lat["before"] * (1 + 1e-12)
    assert res["latency_ratio"] == pytest.approx(lat["after"] / lat["before"])
    # the timer is exact, so the measured exports agree with the prediction
    assert lat["measured_after"] == pytest.approx(lat["predicted_after"], rel=1e-9)
    assert lat["measured_ratio"] == pytest.approx(res["latency_ratio"], rel=1e-9)
    assert abs(lat["error"]) < 1e-9 and lat["runs"] == 1
    assert res["constraints"]["limits"]["latency"] == pytest.approx(0.6 * lat["measured_before"], rel=1e-9)
    # widths predicted no faster than a wider one are never chosen
    assert lat["slower_widths_skipped"]
    assert all(res["subnet"][n] not in widths for n, widths in lat["slower_widths_skipped"].items())
    assert all("latency" in t for t in res["thresholds_visited"]) and "latency_model_s" in res["timings"]
    expected, _ = _brute_force(model, res, {"latency": "60%"}, tmp_path)
    assert res["subnet"] == expected


@pytest.mark.parametrize("constraints", [
    {"latency": "70%", "flops": "50%"},
    {"latency": "55%", "params": "60%"},
    {"latency": "90%", "flops": "80%", "params": "70%"},
])
def test_latency_combines_with_flops_and_params(constraints: dict[str, Any], tmp_path: Path) -> None:
    model, res = _prune(tmp_path, constraints)
    limits = res["constraints"]["limits"]
    assert set(limits) == set(constraints)
    assert res["flops"]["after"] <= limits.get("flops", float("inf"))
    assert res["params"]["after"] <= limits.get("params", float("inf"))
    assert res["latency"]["after"] <= limits["latency"] * (1 + 1e-12)
    expected, _ = _brute_force(model, res, constraints, tmp_path)
    assert res["subnet"] == expected


def test_non_monotone_predictions_still_give_the_lowest_threshold(tmp_path: Path) -> None:
    """A budget where the predicted latency rises again along the pruning order: the bisection over
    the filtered thresholds still returns exactly what a full scan finds."""
    found = []
    for percent in range(20, 100, 4):
        model, res = _prune(tmp_path, {"latency": f"{percent}%"})
        expected, along = _brute_force(model, res, {"latency": f"{percent}%"}, tmp_path)
        assert res["subnet"] == expected, percent
        found.append(any(b > a * (1 + 1e-9) for a, b in itertools.pairwise(along)))
    assert any(found), "no budget exercised a non-monotone pruning order"


def test_an_unreachable_latency_fails_before_any_score_evaluation(tmp_path: Path) -> None:
    score = _score()
    with pytest.raises(ConstraintError, match=r"latency <= 1e-06 ms .* cannot be met: the smallest subnet"):
        prune(mo.apply_mode(tiny_cnn(), ["fastnas"]), {"latency": 1e-6}, DUMMY,
              {"score_func": score, "verbose": False, "latency_options": _options(tmp_path)})
    assert score.calls == []


def test_a_flops_map_is_reused_for_a_latency_budget(tmp_path: Path) -> None:
    checkpoint = str(tmp_path / "search.ckpt")
    _, first = _prune(tmp_path, {"flops": "60%"}, checkpoint=checkpoint)
    assert "latency" not in first and first["num_score_evals"] > 0
    _, second = _prune(tmp_path, {"latency": "60%"}, checkpoint=checkpoint, latency_report="off")
    assert second["num_score_evals"] == 0 and second["sensitivity_map"] == first["sensitivity_map"]
    assert "measured_after" not in second["latency"] and second["latency"]["after"] > 0


def test_visited_subnets_are_measured_for_the_plot(tmp_path: Path) -> None:
    _, res = _prune(tmp_path, {"latency": "50%"}, latency_report="visited")
    visited = res["latency"]["visited"]
    assert len(visited) == len(res["thresholds_visited"]) > 1
    for point, step in zip(visited, res["thresholds_visited"]):
        assert point["predicted"] == pytest.approx(step["latency"]) == pytest.approx(point["measured"], rel=1e-9)


@pytest.mark.parametrize(("config", "message"), [
    ({"latency_report": "sometimes"}, "latency_report='sometimes' is invalid"),
    ({"latency_options": {"bogus": 1}}, "unknown latency option"),
    ({"latency_options": {"runs": 0}}, "runs=0 must be an int >= 1"),
])
def test_latency_config_errors_leave_the_model_unconverted(config: dict[str, Any], message: str) -> None:
    model = tiny_cnn()
    with pytest.raises(ConfigError, match=message):
        prune(model, {"latency": "60%"}, DUMMY, {"score_func": _score(), **config})
    assert mo.applied_modes(model) == []


def test_a_profiler_without_a_latency_model_says_how_to_get_one() -> None:
    space = get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"]))
    with pytest.raises(ConstraintError, match="has no latency model"):
        SubnetProfiler(space, DUMMY).latency()


# ---- the two steps on their own --------------------------------------------------------------------
def _bisect(candidates: list[int], fits: list[bool]) -> int:
    """FastNAS's bisection (hi satisfies, lo does not) over ``candidates``; returns the found index."""
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits[candidates[mid]]:
            hi = mid
        else:
            lo = mid
    return candidates[hi]


@given(st.lists(st.booleans(), min_size=1, max_size=40).filter(any))
def test_bisecting_the_filtered_thresholds_finds_the_first_fitting_one(fits: list[bool]) -> None:
    candidates = bisectable_thresholds(list(range(len(fits))), lambda i: fits[i])
    assert _bisect(candidates, fits) == fits.index(True)
    assert all(fits[i] for i in candidates if i >= fits.index(True))


def test_no_fitting_threshold_is_a_constraint_error() -> None:
    with pytest.raises(ConstraintError, match="no subnet on FastNAS's pruning path"):
        bisectable_thresholds([1, 2, 3], lambda t: False)


def test_choices_no_faster_than_a_wider_one_are_dropped() -> None:
    keys = {"a": {c: (float(10 - c), 0.0, 0.0) for c in range(1, 11)}}
    latency = {10: 9.0, 9: 9.5, 8: 7.0, 7: 7.0, 6: 6.5, 5: 3.0, 4: 4.0, 3: 2.0, 2: 2.5, 1: 1.0}
    kept, dropped = drop_slower_choices(keys, lambda _n, c: latency[c])
    assert sorted(kept["a"]) == [1, 3, 5, 6, 8, 10]
    assert dropped == {"a": [2, 4, 7, 9]}


def test_predicted_vs_measured_plot_is_written(tmp_path: Path) -> None:
    from modeopt_fastnas.plots import have_matplotlib, plot_latency

    if not have_matplotlib():
        pytest.skip("matplotlib is optional")
    points = [{"predicted": 10.0, "measured": 11.0, "label": "1"}, {"predicted": 5.0, "measured": 4.5}]
    out = plot_latency(points, tmp_path / "latency.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- measured check of the chosen subnet (latency_verify) ------------------------------------------
def _inexact(tmp_path: Path, constraints: dict[str, Any], verify: int) -> dict[str, Any]:
    """A search whose timer charges ReLUs per element: the prediction is close, not exact."""
    return _prune(tmp_path, constraints, latency_verify=verify,
                  latency_options={"timer": OpCostTimer(activation_element_s=2e-8)})[1]


def test_an_exact_prediction_is_checked_once(tmp_path: Path) -> None:
    _, res = _prune(tmp_path, {"latency": "60%"})
    check = res["latency"]["verification"]
    assert check["met"] and check["refits"] == 0 and len(check["rounds"]) == 1
    assert check["rounds"][0]["measured_ratio"] == pytest.approx(res["latency_ratio"], rel=1e-9)


def test_a_measured_miss_is_refitted_and_bisected_again(tmp_path: Path) -> None:
    trusted = _inexact(tmp_path, {"latency": "40%"}, verify=0)
    assert trusted["latency"]["verification"] is None
    assert trusted["latency"]["measured_ratio"] > 0.40  # the prediction alone misses the limit
    res = _inexact(tmp_path, {"latency": "40%"}, verify=4)
    check, lat = res["latency"]["verification"], res["latency"]
    first, chosen = check["rounds"][0], check["rounds"][check["chosen_round"]]
    assert first["measured_ratio"] == pytest.approx(trusted["latency"]["measured_ratio"], rel=1e-9)
    assert not first["met"] and chosen["met"] and check["met"] and check["refits"] >= 1
    assert chosen is max((r for r in check["rounds"] if r["met"]), key=lambda r: r["at_reference_ms"])
    assert res["subnet"] == check["subnet"] != trusted["subnet"]
    assert lat["measured_ratio"] <= 0.40 and res["flops"]["after"] < trusted["flops"]["after"]
    # the first refit passes through the original (the reference) and the measured miss
    (_, ms0), (_, ms1) = lat["calibration"]["refits"][0]["through"]
    assert ms0 == pytest.approx(lat["calibration"]["reference_ms"]) and ms1 == pytest.approx(first["at_reference_ms"])
    assert lat["before"] == pytest.approx(lat["calibration"]["reference_ms"], rel=1e-9)
    # the result is what the bisection finds under the kept line, predicted before it was measured
    assert chosen["predicted_ms"] == pytest.approx(lat["after"], rel=1e-9)
    assert lat["after"] <= res["constraints"]["limits"]["latency"]


def test_a_miss_left_after_the_last_measurement_is_reported(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        res = _inexact(tmp_path, {"latency": "40%"}, verify=1)
    check = res["latency"]["verification"]
    assert not check["met"] and check["refits"] == 0 and len(check["rounds"]) == 1
    assert "the budget is not met on this machine as measured" in caplog.text
    assert "raise latency_verify" in caplog.text


def test_latency_verify_must_be_a_count() -> None:
    with pytest.raises(ConfigError, match="latency_verify"):
        prune(tiny_cnn(), {"latency": "60%"}, DUMMY, {"score_func": _score(), "latency_verify": -1})
