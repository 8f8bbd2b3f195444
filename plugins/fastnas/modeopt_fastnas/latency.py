"""The ``latency`` constraint in FastNAS's binary search: slower-than-wider choices, an exact bisection.

FLOPs and params fall whenever a width falls, so the subnet of a larger drop threshold never has more
of them, and bisecting the thresholds is exact. A measured latency does not behave that way: a
narrower layer can be slower (a width that is not a multiple of the vector width wastes lanes), and
two layers' widths interact. Two steps keep the search exact and prefer fast widths:

1. :func:`drop_slower_choices`: a width of an hparam is left out of the pruning order when the model
   with only that hparam narrowed to it is predicted no faster than with a wider choice of it (all
   other hparams at their widest). The wider choice keeps more of the model for no more latency, so
   the search goes from it straight to the next narrower width that is actually faster.
2. :func:`bisectable_thresholds`: every threshold's subnet is checked against all constraints up
   front (a few microseconds each: analytic counts and a table sum). The thresholds above the first
   one that satisfies everything but which miss the budget themselves can never be the answer, so they
   are removed; over the remaining list "satisfies" is false up to the first satisfying threshold and
   true after it, and the bisection finds that first one exactly, in ``log2`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from modeopt_core import ConstraintError

from .sensitivity import PruningKey

__all__ = ["bisectable_thresholds", "drop_slower_choices"]

T = TypeVar("T")


def drop_slower_choices(
    keys: Mapping[str, Mapping[int, PruningKey]], latency_of: Callable[[str, int], float]
) -> tuple[dict[str, dict[int, PruningKey]], dict[str, list[int]]]:
    """The pruning keys without the choices predicted no faster than a wider choice of the same hparam.

    ``latency_of(name, choice)`` predicts the model's latency with only that hparam at that choice.
    Returns ``(kept keys, {hparam: dropped choices})``; the widest choice of every hparam is kept.
    """
    kept: dict[str, dict[int, PruningKey]] = {}
    dropped: dict[str, list[int]] = {}
    for name, by_choice in keys.items():
        fastest_wider = float("inf")
        keep: dict[int, PruningKey] = {}
        for choice in sorted(by_choice, reverse=True):
            ms = latency_of(name, choice)
            if ms < fastest_wider:
                keep[choice] = by_choice[choice]
                fastest_wider = ms
            else:
                dropped.setdefault(name, []).append(choice)
        kept[name] = dict(sorted(keep.items()))
    return kept, {n: sorted(c) for n, c in dropped.items()}


def bisectable_thresholds(thresholds: Sequence[T], fits: Callable[[T], bool]) -> list[T]:
    """``thresholds`` (ascending) without those after the first fitting one that do not fit themselves.

    Raises:
        ConstraintError: no threshold's subnet fits.
    """
    flags = [fits(t) for t in thresholds]
    if not any(flags):
        raise ConstraintError(
            "no subnet on FastNAS's pruning path meets every constraint (the predicted latency of the "
            "narrowest subnets is still above the limit, or the latency limit and the flops/params limits "
            "need different subnets); relax a limit or allow narrower layers in the fastnas config"
        )
    first = flags.index(True)
    return [*thresholds[:first], *(t for t, ok in zip(thresholds[first:], flags[first:]) if ok)]
