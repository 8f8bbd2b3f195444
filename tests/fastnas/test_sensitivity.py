"""Monotone drops, pruning keys and threshold subnets (pure functions)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modeopt_fastnas.sensitivity import monotone_drops, pruning_keys, subnet_for_threshold, threshold_candidates


def test_monotone_drops_take_the_running_max_from_the_widest_choice_and_clamp_at_zero() -> None:
    raw = [[2, 5.0], [4, 7.0], [6, 1.0], [8, -0.5], [10, None], [12, None]]
    assert monotone_drops(raw) == {2: 7.0, 4: 7.0, 6: 1.0, 8: 0.0, 10: 0.0, 12: 0.0}


def test_ties_are_pruned_evenly_then_by_flops_saved() -> None:
    drops = {"a": {4: 0.0, 8: 0.0}, "b": {8: 0.0, 16: 0.0}, "c": {2: 3.0, 4: 0.0}}
    flops_left = {("a", 4): 70.0, ("b", 8): 60.0, ("c", 2): 90.0}
    keys = pruning_keys(drops, lambda n, c: flops_left[(n, c)])
    order = threshold_candidates(keys)
    # a and b lose half their width at drop 0; b saves more FLOPs, so it goes first; c costs 3.0
    assert order == [(0.0, 0.0, 0.0), (0.0, 0.5, 60.0), (0.0, 0.5, 70.0), (3.0, 0.5, 90.0)]
    assert subnet_for_threshold(keys, order[0]) == {"a": 8, "b": 16, "c": 4}
    assert subnet_for_threshold(keys, order[1]) == {"a": 8, "b": 8, "c": 4}
    assert subnet_for_threshold(keys, order[2]) == {"a": 4, "b": 8, "c": 4}
    assert subnet_for_threshold(keys, order[3]) == {"a": 4, "b": 8, "c": 2}


_raw_maps = st.dictionaries(
    st.sampled_from(["h0", "h1", "h2", "h3"]),
    st.lists(st.one_of(st.none(), st.floats(-5, 50, allow_nan=False)), min_size=1, max_size=8),
    min_size=1,
)


@settings(max_examples=60, deadline=None)
@given(_raw_maps)
def test_subnets_only_shrink_as_the_threshold_grows(raw_maps: dict[str, list[float | None]]) -> None:
    drops = {}
    for name, values in raw_maps.items():
        raw = [[4 * (i + 1), v] for i, v in enumerate(values)] + [[4 * (len(values) + 1), None]]
        drops[name] = monotone_drops(raw)
        ordered = [drops[name][c] for c in sorted(drops[name])]
        assert ordered == sorted(ordered, reverse=True) and min(ordered) >= 0.0
    keys = pruning_keys(drops, lambda n, c: float(c))
    previous = None
    for threshold in threshold_candidates(keys):
        subnet = subnet_for_threshold(keys, threshold)
        if previous is not None:
            assert all(subnet[n] <= previous[n] for n in subnet)
        previous = subnet
    assert previous == {n: min(d) for n, d in drops.items()}  # the largest threshold is the smallest subnet
