"""The ``"cost"`` pruning order and the boundary judging by real evaluations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import SubnetProfiler, get_search_space
from modeopt_core import ConfigError
from modeopt_fastnas import prune
from modeopt_fastnas.selection import bisect_threshold, cost_keys, fill_to_budget, weight_grid
from modeopt_fastnas.sensitivity import subnet_for_threshold, threshold_candidates
from tests.fastnas._models import INPUT_SHAPE, WidthScore, conv_chain, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)
C1, C2, C3 = "conv1.out_channels", "conv2.out_channels", "conv3.out_channels"


def _score() -> WidthScore:
    # per channel, conv3 drops the score least but conv2 saves 2.5x the FLOPs (it also narrows conv3's
    # input): the drop order prunes conv3 first, the cost order conv2
    return WidthScore({C1: lambda w: 0.5 * (16 - w), C2: lambda w: 0.04 * (32 - w), C3: lambda w: 0.02 * (64 - w)})


def _search(budget: dict[str, str] | None = None, **config: Any) -> tuple[torch.nn.Module, dict[str, Any], WidthScore]:
    score = _score()
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    model, res = prune(model, budget or {"flops": "55%"}, DUMMY, {"score_func": score, "verbose": False, **config})
    return model, res, score


def _summed_drop(res: dict[str, Any], subnet: dict[str, int]) -> float:
    return sum(res["sensitivity_map"][n][c] for n, c in subnet.items() if n in res["sensitivity_map"])


def _no_widening_fits(model: torch.nn.Module, res: dict[str, Any]) -> bool:
    """No single wider choice of the result keeps every limit and lowers the summed drop."""
    space = get_search_space(model)
    profiler = SubnetProfiler(space, DUMMY)
    subnet = dict(res["subnet"])
    for name, drops in res["sensitivity_map"].items():
        for choice, drop in drops.items():
            wider = {**subnet, name: choice}
            if choice > subnet[name] and drop < drops[subnet[name]] and all(
                    getattr(profiler, k)(wider) <= limit for k, limit in res["constraints"]["limits"].items()):
                return False
    return True


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


def test_cost_order_prunes_the_layer_that_saves_most_per_drop_and_drops_less_in_sum() -> None:
    for flops in ("55%", "40%"):
        drop_model, drop, _ = _search({"flops": flops}, selection="drop")
        cost_model, cost, score = _search({"flops": flops}, selection="cost", boundary_evals=1)
        assert drop["satisfied"] and cost["satisfied"] and cost["selection_order"] == "cost"
        assert cost["flops"]["after"] <= cost["constraints"]["limits"]["flops"]
        assert cost["subnet"][C2] < drop["subnet"][C2] and cost["subnet"][C3] > drop["subnet"][C3]
        assert _summed_drop(cost, cost["subnet"]) < _summed_drop(drop, drop["subnet"])
        assert score(cost_model) == cost["best"]["score"] > score(drop_model)  # measured: the real scores


def test_cost_order_fills_the_budget_its_hull_choices_leave() -> None:
    model, res, _ = _search({"flops": "55%"}, selection="cost")
    entry = next(e for e in res["boundary"] if e["order"] == "cost" and "widened" in e)
    assert entry["widened"] >= 1  # the bisected hull subnet (conv2 at 4) left the budget unspent
    assert res["subnet"] == {k: entry["subnet"][k] for k in res["subnet"]}
    assert _no_widening_fits(model, res)


def test_a_joint_flops_and_params_budget_weighs_both_and_keeps_both() -> None:
    budget = {"flops": "60%", "params": "45%"}
    model, res, _ = _search(budget, selection="cost")
    limits = res["constraints"]["limits"]
    assert res["flops"]["after"] <= limits["flops"] and res["params"]["after"] <= limits["params"]
    entry = next(e for e in res["boundary"] if e["order"] == "cost" and "widened" in e)
    assert set(entry["weights"]) == {"flops", "params"} and sum(entry["weights"].values()) == pytest.approx(1)
    assert _no_widening_fits(model, res)
    # the same budget in the drop order (which ignores what a choice saves) drops more in sum
    _, drop, _ = _search(budget)
    assert drop["params"]["after"] <= limits["params"] and drop["flops"]["after"] <= limits["flops"]
    assert _summed_drop(res, res["subnet"]) < _summed_drop(drop, drop["subnet"])


def test_a_joint_budget_measures_the_other_weights_subnets_next_and_keeps_the_best() -> None:
    full = {"0.out_channels": 16, "3.out_channels": 32, "6.out_channels": 32, "9.out_channels": 64, "12.out_channels": 64}
    score = WidthScore({n: (lambda w, top=top: 3.0 * (1 - w / top) ** 2) for n, top in full.items()})
    model = mo.apply_mode(conv_chain(), ["fastnas"])
    model, res = prune(model, {"flops": "50%", "params": "40%"}, torch.zeros(1, 3, 16, 16),
                       {"score_func": score, "verbose": False, "selection": "cost", "boundary_evals": 3})
    cost = sorted((e for e in res["boundary"] if e["order"] == "cost"), key=lambda e: e["rank"])
    filled = [e for e in cost if "widened" in e]
    assert len(filled) >= 3 and [e["rank"] for e in cost] == list(range(len(cost)))
    assert [e["summed_drop"] for e in filled] == sorted(e["summed_drop"] for e in filled)
    assert len({tuple(sorted(e["subnet"].items())) for e in filled}) == len(filled)
    measured = [e for e in cost if e["score"] is not None]
    assert res["boundary_evals"] == 3 and measured == cost[:3]  # rank by rank
    for entry in measured:  # the additive score: a real score is 100 minus the summed drop
        assert entry["score"] == pytest.approx(100.0 - entry["summed_drop"])
    top = max(e["score"] for e in measured)
    assert any(res["subnet"] == {k: e["subnet"][k] for k in res["subnet"]} for e in measured if e["score"] == top)
    assert score(model) == pytest.approx(top) == pytest.approx(100.0 - cost[0]["summed_drop"])
    limits = res["constraints"]["limits"]
    assert res["flops"]["after"] <= limits["flops"] and res["params"]["after"] <= limits["params"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.floats(0, 5), min_size=4, max_size=4), min_size=1, max_size=4),
       st.lists(st.floats(0.1, 3), min_size=4, max_size=4), st.floats(0.2, 1.0))
def test_fill_to_budget_only_widens_stays_in_budget_and_stops_only_when_nothing_fits(
        raw: list[list[float]], unit: list[float], share: float) -> None:
    choices = (1, 2, 3, 4)
    drops = {f"h{i}": {c: sum(r[c - 1:]) - r[-1] for c in choices} for i, r in enumerate(raw)}  # monotone, 0 at 4
    unit_cost = {f"h{i}": unit[i] for i in range(len(raw))}

    def cost(subnet: Mapping[str, int]) -> float:
        return sum(unit_cost[n] * c for n, c in subnet.items())

    limit = share * cost(dict.fromkeys(drops, 4))
    start = dict.fromkeys(drops, 1)
    if cost(start) > limit:
        return
    filled = fill_to_budget(start, drops, lambda n, a, b: unit_cost[n] * (b - a), lambda s: cost(s) <= limit + 1e-9)
    assert all(filled[n] >= start[n] for n in drops) and cost(filled) <= limit + 1e-9
    for n, by in drops.items():
        for c, d in by.items():
            if c > filled[n] and d < by[filled[n]]:
                assert cost({**filled, n: c}) > limit + 1e-9  # a widening that helps would not fit


def test_weight_grid_covers_the_simplex() -> None:
    two = weight_grid(["flops", "params"], steps=4)
    assert [g["flops"] for g in two] == [0.0, 0.25, 0.5, 0.75, 1.0]
    three = weight_grid(["flops", "params", "latency"], steps=4)
    assert len(three) == 15 and all(sum(g.values()) == pytest.approx(1) for g in three)
    assert len({tuple(sorted(g.items())) for g in three}) == 15
    assert weight_grid(["flops"]) == [{"flops": 1.0}]


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
    assert _summed_drop(cost, cost["subnet"]) < _summed_drop(drop, drop["subnet"])
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
