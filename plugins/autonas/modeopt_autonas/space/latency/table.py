"""The cost function of one group of identical units: exact lookup, or a grid with per-axis corrections.

A layer's cost depends jointly on its axes (a conv between two channel groups on both widths), so it
is tabulated over axis *tuples*, not per hparam:

* **exact** (the reachable tuples are at most ``max_exact``): every tuple is measured; a query is a
  dictionary lookup.
* **grid** (more tuples, independent axes only): each axis keeps ``grid_points`` of its values
  (evenly spread over the sorted values, ends included) and their full product is measured, plus a
  *sweep* of every value of each axis with the other axes at their maximum. A query interpolates the
  grid multilinearly and multiplies, for each axis whose value is not on the grid, by the ratio of
  its sweep measurement to the grid's interpolation at that sweep point. The sweeps keep widths that
  run badly (not a multiple of the vector or tensor-core width) visible where the grid would smooth
  them away; the error is that of assuming such an effect scales the cost along the other axes.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["CostTable", "key_text", "parse_key"]


def key_text(key: Sequence[int]) -> str:
    """``(64, 128)`` -> ``"64,128"`` (the cache's row key)."""
    return ",".join(str(v) for v in key)


def parse_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",")) if text else ()


def _spread(values: Sequence[int], count: int) -> list[int]:
    if len(values) <= count:
        return list(values)
    picks = {round(i * (len(values) - 1) / (count - 1)) for i in range(count)}
    return [values[i] for i in sorted(picks)]


class CostTable:
    """Milliseconds of one layer group as a function of its axis tuple (see the module doc)."""

    def __init__(self, axis_values: Sequence[Sequence[int]], reachable: Iterable[tuple[int, ...]] | None,
                 max_exact: int, grid_points: int) -> None:
        self.axis_values = [list(v) for v in axis_values]
        self.size = math.prod(len(v) for v in self.axis_values) if reachable is None else None
        tuples = None if reachable is None else sorted(set(reachable))
        count = len(tuples) if tuples is not None else self.size
        assert count is not None
        self.mode = "exact" if count <= max_exact or reachable is not None else "grid"
        if self.mode == "exact":
            self.grid: list[list[int]] = []
            self.needed = tuples if tuples is not None else list(itertools.product(*self.axis_values))
        else:
            self.grid = [_spread(v, max(2, grid_points)) for v in self.axis_values]
            tops = [v[-1] for v in self.axis_values]
            needed = set(itertools.product(*self.grid))
            for a, values in enumerate(self.axis_values):
                needed.update(tuple(v if b == a else tops[b] for b in range(len(tops))) for v in values)
            self.needed = sorted(needed)
        self.measured: dict[tuple[int, ...], float] = {}
        self.memo: dict[tuple[int, ...], float] = {}  # measured and already interpolated tuples

    def fill(self, measured: dict[tuple[int, ...], float]) -> None:
        """Set the measured milliseconds of every needed tuple."""
        missing = [k for k in self.needed if k not in measured]
        assert not missing, missing[:3]
        self.measured = {k: measured[k] for k in self.needed}
        self.memo.clear()  # in place: the latency model's query loop holds this dict
        self.memo.update(self.measured)

    def cost(self, key: tuple[int, ...]) -> float:
        """Milliseconds at axis tuple ``key``."""
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        if self.mode == "exact":
            raise KeyError(f"axis tuple {key} is not one of this layer's reachable widths")
        value = self._interp(key)
        tops = [g[-1] for g in self.grid]
        for a, v in enumerate(key):
            if v not in self.grid[a]:
                at = tuple(v if b == a else tops[b] for b in range(len(key)))
                base = self._interp(at)
                if base > 0:
                    value *= self.measured[at] / base
        self.memo[key] = value
        return value

    def _interp(self, key: tuple[int, ...]) -> float:
        corners: list[list[tuple[int, float]]] = []
        for a, v in enumerate(key):
            grid = self.grid[a]
            j = bisect.bisect_left(grid, v)
            if j < len(grid) and grid[j] == v:
                corners.append([(v, 1.0)])
                continue
            if j == 0 or j == len(grid):
                raise KeyError(f"width {v} lies outside the measured range {grid[0]}..{grid[-1]}")
            lo, hi = grid[j - 1], grid[j]
            w = (v - lo) / (hi - lo)
            corners.append([(lo, 1.0 - w), (hi, w)])
        total = 0.0
        for combo in itertools.product(*corners):
            total += math.prod(w for _, w in combo) * self.measured[tuple(v for v, _ in combo)]
        return total

    def slow(self, tolerance: float) -> list[tuple[tuple[int, ...], float, tuple[int, ...], float]]:
        """Measured tuples that run slower than some wider measured tuple, by more than ``tolerance``:
        ``(tuple, ms, wider tuple, its ms)``, the fastest wider one for each."""
        items = sorted(self.measured.items())
        out = []
        for key, ms in items:
            wider = [(m, k) for k, m in items if k != key and all(a >= b for a, b in zip(k, key))]
            if wider:
                best_ms, best = min(wider)
                if best_ms < ms * (1.0 - tolerance):
                    out.append((key, ms, best, best_ms))
        return out

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "measured": len(self.measured),
                "grid": [list(g) for g in self.grid] if self.grid else None}
