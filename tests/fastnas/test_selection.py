"""The ``"cost"`` pruning order and the boundary judging by real evaluations."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_core import ConfigError
from modeopt_fastnas import prune
from modeopt_fastnas.selection import bisect_threshold, cost_keys
from modeopt_fastnas.sensitivity import subnet_for_threshold, threshold_candidates
from tests.fastnas._models import INPUT_SHAPE, WidthScore, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)
C1, C2, C3 = "conv1.out_channels", "conv2.out_channels", "conv3.out_channels"


def _score() -> WidthScore:
    # conv3 (the widest, most parameters) is the cheapest to prune per unit saved
    return WidthScore({C1: lambda w: 0.5 * (16 - w), C2: lambda w: 0.3 * (32 - w), C3: lambda w: 0.02 * (64 - w)})


def _search(**config: Any) -> tuple[torch.nn.Module, dict[str, Any], WidthScore]:
    score = _score()
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    model, res = prune(model, {"flops": "55%"}, DUMMY, {"score_func": score, "verbose": False, **config})
    return model, res, score


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=2, max_size=8), st.lists(st.floats(0.01, 1), min_size=8, max_size=8))
def test_cost_keys_grow_as_choices_shrink_so_larger_thresholds_only_prune_more(raw: list[float], steps: list[float]
                                                                             ) -> None:
    choices = list(range(1, len(raw) + 1))
    drops = {c: max(raw[i:]) if c != choices[-1] else 0.0 for i, c in enumerate(choices)}  # monotone
    costs = dict(zip(choices, itertools.accumulate(steps[: len(choices)])))
    keys = cost_keys({"h": drops}, lambda _name, c: costs[c])["h"]
    assert keys[choices[-1]] == (0.0, 0.0, 0.0)
    finite = sorted((c for c in choices if math.isfinite(keys[c][0])), reverse=True)
    assert [keys[c] for c in finite] == sorted(keys[c] for c in finite)  # strictly in pruning order
    previous = choices[-1]
    for t in threshold_candidates({"h": keys}):
        chosen = subnet_for_threshold({"h": keys}, t)["h"]
        assert chosen <= previous
        previous = chosen


def test_cost_keys_skip_choices_off_the_convex_hull() -> None:
    # cost 1..4 for choices 1..4; choice 2's drop makes it dominated by a mix of 1 and 3
    keys = cost_keys({"h": {1: 10.0, 2: 9.0, 3: 1.0, 4: 0.0}}, lambda _n, c: float(c))["h"]
    assert keys[2][0] == math.inf and math.isfinite(keys[1][0]) and math.isfinite(keys[3][0])
    assert keys[3][0] == pytest.approx(1.0, rel=1e-6) and keys[1][0] == pytest.approx(4.5, rel=1e-6)


def test_bisect_threshold_finds_the_smallest_satisfying_index() -> None:
    thresholds = [(float(i), 0.0, 0.0) for i in range(20)]
    for first_ok in range(20):
        index, steps = bisect_threshold(thresholds, lambda t, k=first_ok: t[0] >= k, max_steps=100)
        assert index == first_ok and steps <= 6


def test_cost_order_prunes_the_cheap_wide_layer_and_keeps_fewer_params_at_the_budget() -> None:
    _, drop, _ = _search(selection="drop")
    _, cost, _ = _search(selection="cost", boundary_evals=1)
    assert drop["satisfied"] and cost["satisfied"] and cost["selection_order"] == "cost"
    assert cost["flops"]["after"] <= cost["constraints"]["limits"]["flops"]
    assert cost["subnet"][C3] < drop["subnet"][C3]  # the cheap layer goes first
    assert cost["params"]["after"] < drop["params"]["after"]


def test_boundary_evals_measure_the_candidates_and_keep_the_best_real_score() -> None:
    model, res, score = _search(selection=("drop", "cost"), boundary_evals=4)
    measured = [e for e in res["boundary"] if e["score"] is not None]
    assert 1 <= res["boundary_evals"] == len(measured) <= 4
    assert len({tuple(sorted(e["subnet"].items())) for e in measured}) == len(measured)  # distinct subnets
    assert all(e["satisfied"] for e in measured)
    best = max(measured, key=lambda e: e["score"])
    assert res["subnet"] == get_search_space(model).config() == {k: best["subnet"][k] for k in res["subnet"]}
    assert res["best"]["score"] == best["score"] == pytest.approx(score(model))
    map_evals = sum(1 for raw in res["sensitivity_raw"].values() for _, d in raw if d is not None) + 1
    assert res["num_score_evals"] == map_evals + res["boundary_evals"]  # the original score counts once
    # the measured candidates are the real scores of those subnets
    for entry in measured:
        assert entry["score"] == pytest.approx(100.0 - sum(f(entry["subnet"][n]) for n, f in score.penalty.items()))


def test_zero_boundary_evals_keep_the_drop_orders_prediction() -> None:
    _, res, _ = _search()
    assert res["boundary_evals"] == 0 and res["selection_order"] == "drop"
    assert all(e["score"] is None for e in res["boundary"])
    assert res["best"]["score"] == res["predicted_score"]


def test_zero_boundary_evals_take_the_first_orders_subnet_on_its_prediction() -> None:
    _, drop, _ = _search()
    _, cost, _ = _search(selection="cost")
    assert cost["boundary_evals"] == 0 and cost["selection_order"] == "cost"
    entry = next(e for e in cost["boundary"] if e["order"] == "cost")
    assert cost["subnet"] == {k: entry["subnet"][k] for k in cost["subnet"]} != drop["subnet"]
    assert cost["best"]["score"] == entry["predicted_score"] and cost["satisfied"]
    assert cost["params"]["after"] < drop["params"]["after"]
    # the order of the tuple decides: ("drop", "cost") is the drop order's subnet
    _, both, _ = _search(selection=("drop", "cost"))
    assert both["selection_order"] == "drop" and both["subnet"] == drop["subnet"]


def test_a_latency_limit_needs_the_drop_order_first_without_boundary_evals() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="put 'drop' first"):
        prune(model, {"latency": "60%"}, DUMMY, {"score_func": _score(), "verbose": False, "selection": "cost"})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_selection_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="selection"):
        _search(selection=("fast",))
    with pytest.raises(ConfigError, match="boundary_evals"):
        _search(boundary_evals=-1)
