"""Meeting a latency limit as measured: time the chosen subnet, refit the model's line, choose again.

A calibrated latency model predicts a subnet's ratio to the original within a few percent, but its
errors are not random where a search ends: the search takes the subnet the model believes fastest for
the budget, so it lands where the model is optimistic (layers that run faster alone than inside the
whole network). :func:`meet_latency_limit` closes the loop with the measured latency as the judge:

1. the chosen subnet's export is timed interleaved with the original's;
2. while no measured choice lies close below the limit (within :data:`CLOSE_BELOW`), the model's
   line ``slope * table_sum + offset`` is refitted through two measured points: the closest miss and
   the closest hit (a bracket, as in regula falsi) once there are both, else the original (the
   anchor) and the newest measurement (all misses, or all hits far below the limit); the search then
   chooses again under the refitted line;
3. the result is the measured hit closest to the limit (the largest subnet that meets it), else the
   measured miss closest to it, with a warning.

Every measurement is a ratio to the original timed in the same round, mapped back to the reference
(the original's latency when the model was calibrated): a machine that got slower or faster since the
calibration moves neither the check nor the refit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from modeopt_core import ConstraintError, distributed

__all__ = ["meet_latency_limit", "refit_through"]

_log = logging.getLogger(__name__)

CLOSE_BELOW = 0.03
"""A measured hit within this fraction below the limit ends the refits: the subnet is as large as it gets."""


class _Measured(NamedTuple):
    config: dict[str, int]
    line: tuple[float, float]  # (slope, offset) under which the search chose it
    raw: float  # its table sum
    record: dict[str, Any]

    @property
    def ms(self) -> float:
        return float(self.record["at_reference_ms"])


def _measure_round(model: Any, config: Mapping[str, int], limit_ms: float) -> dict[str, Any]:
    original = model.original_config()
    predicted = model.latency(config)
    original_ms, measured_ms = distributed.run_on_main(lambda: model.measure([original, dict(config)]))
    ratio = measured_ms / original_ms
    at_reference = ratio * model.reference_ms
    return {
        "predicted_ms": predicted, "measured_ms": measured_ms, "original_measured_ms": original_ms,
        "measured_ratio": ratio, "predicted_ratio": predicted / model.reference_ms,
        "at_reference_ms": at_reference, "limit_ms": limit_ms, "met": at_reference <= limit_ms,
    }


def _predicted_right(record: Mapping[str, Any]) -> bool:
    return abs(record["predicted_ms"] - record["at_reference_ms"]) <= 0.01 * record["at_reference_ms"]


def _set_line(model: Any, slope: float, offset: float) -> None:
    model.slope, model.offset = slope, offset
    model.calibration["slope"], model.calibration["offset"] = slope, offset


def _fit_line(model: Any, points: list[tuple[float, float]]) -> bool:
    """The line through two ``(table sum, ms)`` points, if its slope is positive; records the refit."""
    (x0, y0), (x1, y1) = points
    if not (x1 != x0 and (y1 - y0) / (x1 - x0) > 0):
        return False
    slope = (y1 - y0) / (x1 - x0)
    model.calibration.setdefault("refits", []).append(
        {"before": [model.slope, model.offset], "after": [slope, y0 - slope * x0], "through": [list(p) for p in points]})
    _set_line(model, slope, y0 - slope * x0)
    return True


def refit_through(model: Any, config: Mapping[str, int], ms: float) -> bool:
    """Make ``model`` predict ``ms`` for ``config`` and still the reference for the original subnet.

    Returns False (and changes nothing) when no such line has a positive slope: the subnet's table
    sum is not below the original's, or ``ms`` is not below the reference.
    """
    x0 = model.raw_latency(model.original_config())
    x1 = model.raw_latency(config)
    if not (x1 < x0 and 0 < ms < model.reference_ms):
        return False
    return _fit_line(model, [(x0, model.reference_ms), (x1, ms)])


def meet_latency_limit(
    model: Any, limit_ms: float, config: Mapping[str, int], choose: Callable[[], Mapping[str, int]],
    rounds: int, log_level: int = logging.DEBUG,
) -> dict[str, Any]:
    """Measure ``config`` against ``limit_ms``; refit ``model`` and ``choose()`` again (module doc).

    Args:
        model: the :class:`~modeopt_autonas.space.LatencyModel` the search's constraint asks.
        limit_ms: the resolved latency limit (milliseconds at the reference).
        config: the subnet the search chose.
        choose: runs the search's choice again under the model's current line and returns the subnet;
            it may raise :class:`~modeopt_core.ConstraintError` when nothing fits.
        rounds: the most measurements (>= 1).

    Returns:
        ``{"met": bool, "rounds": [per measurement: predicted/measured ms and ratios, limit, met],
        "refits": int, "subnet": the final subnet, "chosen_round": the index of its measurement}``.
        The model is left with the line under which ``choose()`` returns that subnet.
    """
    tried: list[_Measured] = []
    current = dict(config)
    refits = 0
    for i in range(rounds):
        record = _measure_round(model, current, limit_ms)
        tried.append(_Measured(current, (model.slope, model.offset), model.raw_latency(current), record))
        _log.log(log_level, "latency check %d: predicted %.3f ms, measured %.3f ms at the reference (%.3f of the "
                 "original; limit %.3f ms)", i + 1, record["predicted_ms"], record["at_reference_ms"],
                 record["measured_ratio"], limit_ms)
        below = max((t for t in tried if t.record["met"]), key=lambda t: t.ms, default=None)
        above = min((t for t in tried if not t.record["met"]), key=lambda t: t.ms, default=None)
        if i == rounds - 1 or (below is not None and below.ms >= (1 - CLOSE_BELOW) * limit_ms):
            break  # no measurement left, or a hit close below the limit: as large as it gets
        if above is None and below is not None and _predicted_right(below.record):
            break  # all hits, and the model was right about them: a larger subnet would not fit
        if below is not None and above is not None:  # a bracket
            fitted = _fit_line(model, [(below.raw, below.ms), (above.raw, above.ms)])
        else:  # one-sided: through the original and the newest measurement, which the current line got
            # wrong, so the next choice differs (the closest one may give back a line already tried)
            fitted = refit_through(model, current, record["at_reference_ms"])
        if not fitted:
            break
        refits += 1
        try:
            chosen = dict(choose())
        except ConstraintError:
            record["no_subnet_after_refit"] = True
            break
        if any(chosen == t.config for t in tried):
            break  # the search gives a subnet already measured: nothing new to learn
        current = chosen
    final = max((t for t in tried if t.record["met"]), key=lambda t: t.ms, default=None) or min(tried, key=lambda t: t.ms)
    if (model.slope, model.offset) != final.line or final.config != current:
        _set_line(model, *final.line)
        again = dict(choose())  # the search's own state (best, history) for that subnet
        assert again == final.config, "choose() must be deterministic under a given line"
    index = next(i for i, t in enumerate(tried) if t is final)
    met = final.record["met"]
    if not met:
        last = final.record
        _log.warning(
            "the chosen subnet measured %.3f ms (%.1f%% of the original) against a latency limit of %.3f ms after "
            "%d measurement(s): the budget is not met on this machine as measured; lower the limit, allow narrower "
            "layers, or raise latency_verify", last["at_reference_ms"], 100 * last["measured_ratio"], limit_ms,
            len(tried))
    return {"met": met, "rounds": [t.record for t in tried], "refits": refits, "subnet": dict(final.config),
            "chosen_round": index}
