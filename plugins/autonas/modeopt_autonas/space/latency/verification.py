"""Meeting a latency limit as measured: time the chosen subnet, refit the model through it, choose again.

A calibrated latency model predicts a subnet's ratio to the original within a few percent, but its
errors are not random where a search ends: the search takes the subnet the model believes fastest for
the budget, so it lands where the model is optimistic (layers that run faster alone than inside the
whole network). :func:`meet_latency_limit` closes the loop. It times the chosen subnet's export
interleaved with the original's; when the measured ratio misses the limit, it refits the model's line
exactly through the original (the anchor) and the measured point, which makes the model exact at the
search's boundary, and lets the search choose again. At most ``rounds`` measurements.

Every measurement is taken as a ratio to the original timed in the same round and mapped back to the
reference (the original's latency when the model was calibrated): a machine that got slower or faster
since the calibration moves neither the check nor the refit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from modeopt_core import ConstraintError, distributed

__all__ = ["meet_latency_limit", "refit_through"]

_log = logging.getLogger(__name__)


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


def refit_through(model: Any, config: Mapping[str, int], ms: float) -> bool:
    """Make ``model`` predict ``ms`` for ``config`` and still the reference for the original subnet.

    The line ``slope * table_sum + offset`` is replaced by the one through both points. Returns False
    (and changes nothing) when no such line has a positive slope: the subnet's table sum is not below
    the original's, or ``ms`` is not below the reference.
    """
    original = model.original_config()
    x0, y0 = model.raw_latency(original), model.reference_ms
    x1 = model.raw_latency(config)
    if not (x1 < x0 and 0 < ms < y0):
        return False
    slope = (y0 - ms) / (x0 - x1)
    model.calibration.setdefault("refits", []).append(
        {"before": [model.slope, model.offset], "after": [slope, y0 - slope * x0], "raw": x1, "measured": ms})
    model.slope, model.offset = slope, y0 - slope * x0
    model.calibration["slope"], model.calibration["offset"] = model.slope, model.offset
    return True


def _undo_refit(model: Any) -> None:
    slope, offset = model.calibration["refits"].pop()["before"]
    model.slope, model.offset = slope, offset
    model.calibration["slope"], model.calibration["offset"] = slope, offset


def meet_latency_limit(
    model: Any, limit_ms: float, config: Mapping[str, int], choose: Callable[[], Mapping[str, int]],
    rounds: int, log_level: int = logging.DEBUG,
) -> dict[str, Any]:
    """Measure ``config`` against ``limit_ms`` and, while it misses, refit ``model`` and ``choose()`` again.

    Args:
        model: the :class:`~modeopt_autonas.space.LatencyModel` the search's constraint asks.
        limit_ms: the resolved latency limit (milliseconds at the reference).
        config: the subnet the search chose.
        choose: runs the search's choice again with the refitted model and returns the new subnet; it
            may raise :class:`~modeopt_core.ConstraintError` when nothing fits any more (the refit is
            then undone and ``choose()`` called once more to restore the previous choice).
        rounds: the most measurements (>= 1).

    Returns:
        ``{"met": bool, "rounds": [per measurement: predicted/measured ms and ratios, limit, met],
        "refits": int, "subnet": the final subnet}``.
    """
    records: list[dict[str, Any]] = []
    current = dict(config)
    refits = 0
    for i in range(rounds):
        record = _measure_round(model, current, limit_ms)
        records.append(record)
        _log.log(log_level, "latency check %d: predicted %.3f ms, measured %.3f ms at the reference (%.3f of the "
                 "original; limit %.3f ms)", i + 1, record["predicted_ms"], record["at_reference_ms"],
                 record["measured_ratio"], limit_ms)
        if record["met"] or i == rounds - 1 or not refit_through(model, current, record["at_reference_ms"]):
            break
        refits += 1
        try:
            chosen = dict(choose())
        except ConstraintError:
            _undo_refit(model)
            refits -= 1
            current = dict(choose())
            record["no_subnet_after_refit"] = True
            break
        if chosen == current:  # the search cannot go further on its path
            break
        current = chosen
    met = records[-1]["met"]
    if not met:
        last = records[-1]
        _log.warning(
            "the chosen subnet measured %.3f ms (%.1f%% of the original) against a latency limit of %.3f ms after "
            "%d measurement(s): the budget is not met on this machine as measured; lower the limit, allow narrower "
            "layers, or raise latency_verify", last["at_reference_ms"], 100 * last["measured_ratio"], limit_ms,
            len(records))
    return {"met": met, "rounds": records, "refits": refits, "subnet": current}
