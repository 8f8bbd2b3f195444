"""The FastNAS sensitivity map measured by all ranks of a ``torch.distributed`` group at once.

One process visits each hparam's choices smallest first and stops at the first drop that is ~0.
Here every rank follows the same plan in *waves*: a wave gives each rank the same number of
(hparam, choice) pairs, the next choices of different unfinished hparams where possible (up to
``MAX_PAIRS_PER_RANK`` each while enough hparams are open, so that there are fewer waves to wait
for), further choices of the same hparams once fewer hparams than ranks are left. The drops are
all-gathered and every rank applies the one-process rule to what is known: an hparam is finished at
its first ~0 drop (drops measured above it are discarded, as if never evaluated) or once all its
choices are measured. So each rank ends with exactly the raw map of one process; only choices drawn
above a ~0 drop in the same wave are extra work, and every wave keeps every rank equally busy,
whatever the hparams' sizes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeopt_core import distributed

__all__ = ["MAX_PAIRS_PER_RANK", "ShardedMapStats", "sharded_sensitivity_map"]

MAX_PAIRS_PER_RANK = 3
"""Pairs a rank may measure per wave (only while each of them belongs to another open hparam)."""

RawEntry = list[list[Any]]


@dataclass
class _Walk:
    """One hparam's progress: its choices to measure (ascending, the max excluded) and the drops so far."""

    name: str
    choices: list[int]
    max_choice: int
    drops: dict[int, float] = field(default_factory=dict)
    handed_out: int = 0  # choices[:handed_out] were given to a rank

    def settle(self, tol: float) -> RawEntry | None:
        """The raw entry once the one-process rule has decided every choice, else None."""
        raw: RawEntry = []
        for i, choice in enumerate(self.choices):
            if choice not in self.drops:
                return None
            drop = self.drops[choice]
            raw.append([choice, drop])
            if drop <= tol:
                raw.extend([c, None] for c in self.choices[i + 1 :])
                break
        raw.append([self.max_choice, None])
        return raw

    def decided(self, tol: float) -> int:
        """How many choices the one-process rule has decided (measured, or skipped above a ~0 drop)."""
        for i, choice in enumerate(self.choices):
            if choice not in self.drops:
                return i
            if self.drops[choice] <= tol:
                return len(self.choices)
        return len(self.choices)


@dataclass
class ShardedMapStats:
    """What the waves cost: ``waves``, evaluations ``kept`` in the map and ``discarded`` (above a ~0 drop)."""

    waves: int = 0
    kept: int = 0
    discarded: int = 0


def _plan(walks: Sequence[_Walk], width: int) -> list[tuple[str, int]]:
    """The wave's pairs (rank ``r`` takes ``pairs[r::width]``): one per unfinished hparam in order, as
    many per rank as fit without repeating an hparam (at least one), then further choices round-robin."""
    slots: list[tuple[str, int]] = []
    open_walks = [w for w in walks if w.handed_out < len(w.choices)]
    size = width * min(MAX_PAIRS_PER_RANK, max(1, len(open_walks) // width))
    while len(slots) < size and open_walks:
        for walk in list(open_walks):
            if len(slots) == size:
                break
            slots.append((walk.name, walk.choices[walk.handed_out]))
            walk.handed_out += 1
            if walk.handed_out == len(walk.choices):
                open_walks.remove(walk)
    return slots


def _measure_slots(measure: Callable[[str, int], float], slots: list[tuple[str, int]]) -> list[float]:
    return [measure(name, choice) for name, choice in slots]


def sharded_sensitivity_map(
    todo: Sequence[tuple[str, Sequence[int]]],
    measure: Callable[[str, int], float],
    *,
    zero_drop_tol: float,
    on_finished: Callable[[str, RawEntry], None],
    on_wave: Callable[[int, str, int, float], None] | None = None,
) -> ShardedMapStats:
    """Measure the raw sensitivity entries of ``todo`` (``(hparam, ascending choices incl. the max)``).

    Args:
        measure: ``measure(hparam, choice) -> drop``, run on the rank a pair is given to.
        on_finished: called on every rank, in the order hparams finish, with each raw entry.
        on_wave: called after each wave with (newly decided choices, an hparam, a choice, its drop) of
            that wave, for progress reports.
    """
    tol = zero_drop_tol
    walks = [_Walk(name, [int(c) for c in choices[:-1]], int(choices[-1])) for name, choices in todo]
    stats = ShardedMapStats()
    width, me = distributed.world_size(), distributed.rank()
    for walk in list(walks):  # an hparam with a single choice has nothing to measure
        raw = walk.settle(tol)
        if raw is not None:
            on_finished(walk.name, raw)
            walks.remove(walk)
    while walks:
        slots = _plan(walks, width)
        measured = distributed.run_and_gather(functools.partial(_measure_slots, measure, slots[me::width]))
        stats.waves += 1
        by_name = {w.name: w for w in walks}
        before = {w.name: w.decided(tol) for w in walks}
        for rank, drops in enumerate(measured):
            for (name, choice), drop in zip(slots[rank::width], drops):
                by_name[name].drops[choice] = float(drop)
        newly_decided = sum(w.decided(tol) - before[w.name] for w in walks)
        for walk in list(walks):
            raw = walk.settle(tol)
            if raw is not None:
                kept = sum(1 for _, d in raw if d is not None)
                stats.kept += kept
                stats.discarded += len(walk.drops) - kept
                on_finished(walk.name, raw)
                walks.remove(walk)
        if on_wave is not None:
            name, choice = slots[-1]
            on_wave(newly_decided, name, choice, by_name[name].drops[choice])
    return stats
