"""Turning a sensitivity map into a subnet at the budget: two pruning orders, each bisected exactly.

Both orders give every (hparam, choice) a *key*; a threshold key selects, per hparam, its smallest
choice whose key is <= the threshold (:func:`~.sensitivity.subnet_for_threshold`). Keys grow as a
choice shrinks, so a larger threshold never widens a layer and FLOPs/params only fall: bisecting
over the sorted keys finds the smallest threshold meeting the budget exactly.

* ``"drop"`` (ModelOpt's order, :func:`~.sensitivity.pruning_keys`): the key is the score drop of
  the choice itself (ties by removed fraction, then FLOPs saved). The result is the subnet whose
  worst single-layer drop is least; it ignores how much each choice saves.
* ``"cost"`` (:func:`cost_keys`): drops are weighed against what a choice saves. With a budget price
  ``mu``, each hparam takes the choice minimising ``drop + mu * cost``, where ``cost`` is the
  model's FLOPs fraction with only that hparam narrowed, plus ``params_weight`` times its params
  fraction (so that, at equal FLOPs, parameter-heavy layers are cut first). Only choices on the
  lower convex hull of (cost, drop) are ever optimal; a choice becomes optimal at the slope of the
  hull edge leading to it, which is its key. The summed drops of the result are (to first order)
  the least for its cost. Only hull choices are taken, so the bisected subnet can stay well under
  the budget; :func:`fill_to_budget` then widens it while the budget holds, each step taking the
  widening that removes the most summed drop per unit of cost it adds (the cost with the other
  hparams at their max) among those that fit. With limits on more than one
  resource (say FLOPs and params) the cost weighs each resource by a weight relative to its limit;
  the searcher tries the weights of :func:`weight_grid` and keeps the filled subnet with the least
  summed drop, so the budget itself says which resource matters more.

Which order prunes better depends on the model and the score; :class:`~modeopt_fastnas.BinarySearcher`
builds the boundary subnet of each and, with ``boundary_evals`` > 0, measures their real scores
(layers interact, so the map only predicts them) and keeps the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from .sensitivity import PruningKey

__all__ = ["SELECTION_ORDERS", "bisect_threshold", "cost_keys", "fill_to_budget", "weight_grid"]

SELECTION_ORDERS = ("drop", "cost")
"""The pruning orders a search can build candidates from (``selection`` search-config key)."""

_TIE = 1e-9  # relative weight of the removed fraction: orders choices whose drops are equal


def cost_keys(
    drops: Mapping[str, Mapping[int, float]],
    cost: Callable[[str, int], float],
) -> dict[str, dict[int, PruningKey]]:
    """Keys of the ``"cost"`` order: ``(slope of the hull edge leading to the choice, removed fraction,
    cost)``; choices off the lower convex hull get ``inf`` (never selected).

    ``cost(name, choice)`` is the (normalised) cost of the model with only that hparam narrowed.
    """
    scale = max((abs(d) for by in drops.values() for d in by.values()), default=0.0) or 1.0
    keys: dict[str, dict[int, PruningKey]] = {}
    for name, by_choice in drops.items():
        widest = max(by_choice)
        # descending choices: (choice, cost, drop + a tiny penalty per removed channel, so equal drops
        # are pruned gradually, the cheapest removal first)
        points = [(c, cost(name, c), by_choice[c] + _TIE * scale * (1.0 - c / widest))
                  for c in sorted(by_choice, reverse=True)]
        hull = [points[0]]
        slopes = [0.0]
        for c, k, d in points[1:]:
            while True:
                _, pk, pd = hull[-1]
                saved = pk - k
                slope = math.inf if saved <= 0 else (d - pd) / saved
                if len(hull) > 1 and slope <= slopes[-1]:
                    hull.pop()
                    slopes.pop()
                    continue
                break
            if slope < math.inf:
                hull.append((c, k, d))
                slopes.append(max(slope, 0.0))
        on_hull = {c: s for (c, _, _), s in zip(hull, slopes)}
        keys[name] = {
            c: (0.0, 0.0, 0.0) if c == widest else
            (on_hull.get(c, math.inf), 1.0 - c / widest, float(cost(name, c)))
            for c in by_choice
        }
    return keys


def bisect_threshold(
    thresholds: list[PruningKey], satisfied: Callable[[PruningKey], bool], max_steps: int
) -> tuple[int, int]:
    """The index of the smallest threshold for which ``satisfied`` holds (the last one is assumed to
    hold) and the number of steps taken; at most ``max_steps`` evaluations of ``satisfied``."""
    lo, hi = -1, len(thresholds) - 1
    index, steps = hi, 0
    while steps < max_steps:
        steps += 1
        if satisfied(thresholds[index]):
            hi = index
        else:
            lo = index
        if hi - lo <= 1:
            break
        index = (lo + hi) // 2
    return hi, steps


def fill_to_budget(
    subnet: Mapping[str, int],
    drops: Mapping[str, Mapping[int, float]],
    added_cost: Callable[[str, int, int], float],
    satisfied: Callable[[Mapping[str, int]], bool],
) -> dict[str, int]:
    """Widen ``subnet`` greedily while ``satisfied`` holds (see the module doc).

    Each step ranks, for every hparam of ``drops``, each wider choice with a smaller drop by the drop
    it removes per unit of ``added_cost(name, current, wider)``, and takes the first in that ranking
    that still satisfies the budget; it stops when no widening that lowers the summed drop fits.
    ``added_cost`` only orders the widenings (an estimate is fine): ``satisfied`` decides.
    """
    out = dict(subnet)
    while True:
        options = []
        for name, by_choice in drops.items():
            current = out[name]
            for choice, drop in by_choice.items():
                gain = by_choice[current] - drop
                if choice > current and gain > 0:
                    added = added_cost(name, current, choice)
                    options.append((gain / added if added > 0 else math.inf, gain, name, choice))
        options.sort(key=lambda o: (-o[0], -o[1], o[2], o[3]))
        taken = next(((n, c) for _, _, n, c in options if satisfied({**out, n: c})), None)
        if taken is None:
            return out
        out[taken[0]] = taken[1]


def weight_grid(resources: list[str], steps: int = 8) -> list[dict[str, float]]:
    """Weight vectors over ``resources`` on a simplex grid (each weight a multiple of ``1 / steps``,
    summing to 1), e.g. for two resources ``steps + 1`` vectors from all-second to all-first."""

    def parts(total: int, count: int) -> Iterator[tuple[int, ...]]:  # ``count`` naturals summing to ``total``
        if count == 1:
            yield (total,)
            return
        for head in range(total + 1):
            for rest in parts(total - head, count - 1):
                yield (head, *rest)

    if not resources:
        return []
    return [{r: p / steps for r, p in zip(resources, combo)} for combo in parts(steps, len(resources))]
