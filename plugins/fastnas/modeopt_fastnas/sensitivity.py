"""Sensitivity maps: per-hparam score drops, made monotone, and the subnet a threshold selects.

A *raw* entry of one hparam lists its choices in ascending order with the measured score drop, or
None where the choice was not evaluated (the max choice, and every choice above the first one whose
drop was ~0). The *monotone* map turns raw entries into drops that never increase with the choice and
are never negative: a smaller width never looks less harmful than a larger one.

A threshold selects, for every hparam, its smallest choice whose drop is <= the threshold. Equal drops
are common (every choice whose drop is ~0; accuracies counted on a few hundred samples), and a plain
number threshold would then shrink all tied choices at once and overshoot the budget. So each
(hparam, choice) gets a *pruning key* ``(drop, fraction of the width removed, FLOPs left when only
this hparam is narrowed)``, compared in that order, and thresholds are keys: among equal drops the
smallest fraction is removed first, evenly across layers, and among those the layer saving the most
FLOPs goes first. Keys grow strictly as a choice shrinks, so as the threshold grows every hparam
shrinks or stays and FLOPs and params never increase: a binary search over the sorted keys is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["PruningKey", "RawEntry", "monotone_drops", "pruning_keys", "subnet_for_threshold", "threshold_candidates"]

RawEntry = Sequence[Sequence[float | int | None]]
"""``[[choice, drop or None], ...]`` in ascending choice order (JSON-able, as checkpointed)."""

PruningKey = tuple[float, float, float]
"""``(drop, removed fraction, FLOPs left)``: the order in which (hparam, choice) pairs are pruned."""


def monotone_drops(raw: RawEntry) -> dict[int, float]:
    """``{choice: drop}`` with drops non-increasing in the choice and >= 0 (None counts as 0)."""
    out: dict[int, float] = {}
    running = 0.0
    for choice, drop in sorted(((int(c), d) for c, d in raw), key=lambda e: e[0], reverse=True):  # type: ignore[arg-type]
        running = max(running, 0.0 if drop is None else float(drop))
        out[choice] = running
    return dict(sorted(out.items()))


def pruning_keys(
    drops: Mapping[str, Mapping[int, float]], flops_left: Callable[[str, int], float]
) -> dict[str, dict[int, PruningKey]]:
    """The pruning key of every (hparam, choice); ``flops_left(name, choice)`` counts the model's FLOPs
    with only that hparam narrowed to that choice."""
    keys: dict[str, dict[int, PruningKey]] = {}
    for name, by_choice in drops.items():
        widest = max(by_choice)
        keys[name] = {
            c: (d, 0.0 if c == widest else 1.0 - c / widest, 0.0 if c == widest else float(flops_left(name, c)))
            for c, d in by_choice.items()
        }
    return keys


def subnet_for_threshold(keys: Mapping[str, Mapping[int, PruningKey]], threshold: PruningKey) -> dict[str, int]:
    """For each hparam, its smallest choice whose key is <= ``threshold``."""
    subnet: dict[str, int] = {}
    for name, by_choice in keys.items():
        fitting = [c for c, k in by_choice.items() if k <= threshold]
        # the widest choice has the smallest possible key, so it fits any candidate threshold
        subnet[name] = min(fitting) if fitting else max(by_choice)
    return subnet


def threshold_candidates(keys: Mapping[str, Mapping[int, PruningKey]]) -> list[PruningKey]:
    """The distinct keys, ascending: the only thresholds at which the selected subnet changes."""
    values: set[PruningKey] = {(0.0, 0.0, 0.0)}
    for by_choice in keys.values():
        values.update(by_choice.values())
    return sorted(values)
