"""Calibration of a latency table against whole exported subnets, and their end-to-end measurement.

The table's sum over layers leaves out everything between the searchable layers (activations,
residual additions, pooling, reshapes, Python and dispatch overhead) and times each layer alone, with
its weights and input hot in cache. A few whole subnets are therefore exported and timed end to end,
and the prediction is ``slope * table_sum + offset``:

* the fit is anchored at the **original subnet**: the model predicts its measured latency exactly, so
  a limit of ``"60%"`` means 60% of the original model's measured latency;
* the slope is the least-squares slope through that anchor over the other calibration subnets (the
  minimum, three uniform shrinks by choice index and ``count - 5`` random ones, drawn from a fixed
  seed); a non-positive slope (a degenerate fit) falls back to ``measured / sum`` at the anchor.

The slope absorbs costs that grow with the widths (element-wise ops on narrower activations), the
offset those that do not. The relative error of every calibration subnet is kept in the record.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from modeopt_core import LatencyTimer
from modeopt_core.sdk import time_interleaved

from ..hparam import Hparam

__all__ = ["calibration_configs", "fit_anchored", "measure_subnets"]


def calibration_configs(hparams: Sequence[tuple[str, Hparam]], count: int, seed: int) -> list[dict[str, int]]:
    """``count`` distinct subnets (fewer if the space is smaller): the original first, then the minimum,
    uniform shrinks to 25/50/75% of each choice list, then random ones."""
    configs: list[dict[str, int]] = [{n: hp.original for n, hp in hparams}, {n: hp.min for n, hp in hparams}]
    for fraction in (0.5, 0.25, 0.75):
        configs.append({n: hp.choices[round(fraction * (len(hp.choices) - 1))] for n, hp in hparams})
    rng = random.Random(seed)
    for _ in range(4 * count):
        if len({tuple(c.values()) for c in configs}) >= count:
            break
        configs.append({n: rng.choice(hp.choices) for n, hp in hparams})
    out, seen = [], set()
    for config in configs:
        key = tuple(config.values())
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out[:count]


def fit_anchored(raw: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``(slope, offset)`` of ``measured ~ slope * raw + offset`` through the first point (see module doc)."""
    x0, y0 = raw[0], measured[0]
    num = sum((x - x0) * (y - y0) for x, y in zip(raw[1:], measured[1:]))
    den = sum((x - x0) ** 2 for x in raw[1:])
    slope = num / den if den > 0 else 0.0
    if not slope > 0:
        slope = y0 / x0 if x0 > 0 else 1.0
    return slope, y0 - slope * x0


def measure_subnets(
    space: Any, configs: Sequence[Mapping[str, int]], args: Sequence[Any], kwargs: Mapping[str, Any],
    runs: int, warmup: int, timer: LatencyTimer,
) -> list[float]:
    """Milliseconds of each subnet's exported model, all timed round-robin (eval, inference mode).

    The first subnet gets its median; every other one its paired ratio to the first
    (:meth:`~modeopt_core.LatencyStats.ratio_to`) times that median, so that the ratios the
    limits, the calibration and the checks use are the least moved by a change of machine load during
    the measurement. The space's selection is put back afterwards.
    """
    saved = space.config()
    models = []
    try:
        with space.driver_paused():
            for config in configs:
                space.select(dict(config), strict=False)
                models.append(space.export(inplace=False).eval())
    finally:
        space.select(saved)
    fns = {i: functools.partial(m, *args, **kwargs) for i, m in enumerate(models)}
    with torch.inference_mode():
        stats = time_interleaved(fns, runs, warmup, timer)
    first = stats[0]
    return [first.median_ms, *[stats[i].ratio_to(first) * first.median_ms for i in range(1, len(models))]]
