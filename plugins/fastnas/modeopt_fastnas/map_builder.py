"""Building the FastNAS sensitivity map: score evaluations, full or downstream-only, in one process or sharded.

:class:`SensitivityMapBuilder` is the part of :class:`~modeopt_fastnas.BinarySearcher` that measures
the map. Each entry narrows one width hparam with every other at its max and measures the score drop:

* with a :class:`~modeopt_fastnas.BatchScore` ``score_func`` (and calibration batches drawn from a
  ``data_loader`` when BN statistics are re-estimated per evaluation), an entry runs only the network
  downstream of the narrowed group (:class:`~modeopt_fastnas.downstream.DownstreamEvaluator`): the
  same drop as a full evaluation, at the cost of the downstream part;
* otherwise (any ``score_func(model)``, a user ``forward_loop``, sharding across ranks,
  ``downstream_cache_mb=0``, or a group whose upstream activations exceed the cap) each entry
  re-estimates all BN statistics and calls ``score_func`` on the whole model.

Hparams are visited choice by choice from the smallest up; once a drop is ~0 (``zero_drop_tol``) the
larger choices are not evaluated. The map is checkpointed after each hparam. BatchNorm statistics of
the original score and of every entry are re-estimated on the map's share of the drawn calibration
batches (``map_calibration_samples``; all of them for boundary evaluations and the returned model).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from modeopt_core import distributed, make_forward_loop, recalibrate_batchnorm
from modeopt_core.sdk import default_collect_func, progress

from ._searcher_state import FastNASSearcherState
from ._sharded_sensitivity import sharded_sensitivity_map
from .downstream import DownstreamEvaluator, ReplayError
from .scores import BatchScore

if TYPE_CHECKING:
    from modeopt_autonas.space import Hparam

__all__ = ["DEFAULT_MAP_CALIBRATION_SAMPLES", "SensitivityMapBuilder"]

_log = logging.getLogger(__name__)

DEFAULT_MAP_CALIBRATION_SAMPLES = 512
"""Default ``map_calibration_samples``: the samples the map's BatchNorm re-estimations see at least."""


def _num_samples(inputs: Any) -> int | None:
    """The batch size of a model input (the first dim of its first tensor), None when it has none."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.ndim else None
    items = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else ()
    for item in items:
        found = _num_samples(item)
        if found is not None:
            return found
    return None


class SensitivityMapBuilder(FastNASSearcherState):
    """Mixin of :class:`~modeopt_fastnas.BinarySearcher`: the sensitivity-map phase (see the module doc)."""

    def _calibrate(self) -> None:
        """Re-estimate all BatchNorm statistics for the current subnet from the calibration data (the
        map's share of it while measuring the original score or the map)."""
        assert self.forward_loop is not None
        loop = self._map_forward_loop if self._in_map and self._map_forward_loop is not None else self.forward_loop
        space = self._space()
        with space.driver_paused():  # the searcher manages the statistics itself
            self._calibration_batches = recalibrate_batchnorm(
                self.model, loop, min_batches=self.config["min_calibration_batches"], strict=True
            )
        if space.driver is not None:
            space.driver.note_calibrated()

    def _measure_score(self, calibrate: bool | None = None) -> float:
        """The real score of the model as currently selected, after BN re-estimation when ``calibrate``
        (default: when ``bn_calibration`` is ``"each"``) and calibration data exists."""
        if (self._bn_mode == "each" if calibrate is None else calibrate) and self.forward_loop is not None:
            self._calibrate()
        with self._space().driver_paused():
            score = super().eval_score()
        self._count_evaluation()
        return score

    def _count_evaluation(self) -> None:
        self.num_score_evals += 1
        self._evals_this_run += 1

    # ----------------------------------------------------------------- the downstream evaluator
    def _downstream_evaluator(self) -> DownstreamEvaluator | None:
        """The evaluator, when the score and the calibration data allow it (else None, with the reason logged)."""
        score, cap = self.config["score_func"], self.config["downstream_cache_mb"]
        why = None
        if cap <= 0:
            why = "downstream_cache_mb=0"
        elif not isinstance(score, BatchScore):
            why = "score_func is not a BatchScore (e.g. modeopt_fastnas.AccuracyScore)"
        elif self._bn_mode == "each" and self._calibration_inputs is None:
            why = "BN statistics come from a forward_loop (pass data_loader instead)"
        elif distributed.is_distributed() and self.config["shard_evaluations"]:
            why = "evaluations are sharded across ranks"
        if why is not None:
            _log.log(self._log_level, "FastNAS evaluates the whole model per entry: %s", why)
            return None
        assert isinstance(score, BatchScore)
        calibration = self._map_calibration_inputs if self._bn_mode == "each" else None
        evaluator = DownstreamEvaluator(self._space(), score, calibration, cache_mb=cap)
        if self._bn_mode == "each" and not self._calibrated_at_max:
            self._calibrate()  # resumed: the reference statistics are those of the calibrated original model
        evaluator.set_reference()
        return evaluator

    def _draw_calibration_inputs(self, drawn: list[Any]) -> None:
        """Keep the drawn calibration batches' model inputs, and the map's share of them (its inputs
        and its forward loop)."""
        collect = self.config["collect_func"] or default_collect_func
        self._calibration_inputs = [collect(batch) for batch in drawn]
        share = self._map_calibration_share()
        self._map_calibration_inputs = [self._calibration_inputs[i] for i in share]
        self._map_forward_loop = make_forward_loop([drawn[i] for i in share], collect_func=self.config["collect_func"])

    def _map_calibration_share(self) -> list[int]:
        """Indices of the drawn batches the map calibrates on: evenly spaced (a loader sorted by class
        gives every class its share), at least ``map_calibration_samples`` samples and
        ``min_calibration_batches`` batches; all of them when 0 or when the batch size is unknown."""
        assert self._calibration_inputs is not None
        total, wanted = len(self._calibration_inputs), self.config["map_calibration_samples"]
        size = _num_samples(self._calibration_inputs[0]) if total else None
        if wanted <= 0 or not size:
            return list(range(total))
        count = max(math.ceil(wanted / size), self.config["min_calibration_batches"])
        if count >= total:
            return list(range(total))
        return [i * total // count for i in range(count)]

    # ----------------------------------------------------------------- the map
    def _build_sensitivity_map(self) -> None:
        space = self._space()
        self.original_score = distributed.broadcast_object(self.original_score)  # rank 0's, on every rank
        assert self.original_score is not None
        todo = [(n, hp) for n, hp in self._targets.items() if n not in self.sensitivity_raw]
        if len(todo) < len(self._targets):
            _log.log(self._log_level, "FastNAS resumed: %d of %d hparams already mapped",
                     len(self._targets) - len(todo), len(self._targets))
        max_subnet = {n: hp.max for n, hp in space.named_hparams(True)}
        bar = progress(
            total=sum(len(hp.choices) - 1 for _, hp in todo),
            desc="FastNAS sensitivity",
            enabled=self.config["verbose"],
            unit="choice",
        )
        with bar, self._map_calibration():
            if distributed.is_distributed() and self.config["shard_evaluations"]:
                self._map_across_ranks(todo, max_subnet, bar)
                todo = []
            evaluator = self._downstream_evaluator() if todo else None
            if evaluator is not None:  # visit groups in forward order: each record is built on the previous
                by_hp = {id(hp): name for name, hp in todo}
                todo = [(by_hp[id(hp)], hp) for hp in evaluator.order([hp for _, hp in todo])]
            try:
                for name, hp in todo:
                    space.select(max_subnet, strict=False)
                    self._map_hparam(name, hp, evaluator, bar)
                    space.select({name: hp.max}, strict=False)
                    self.save_search_checkpoint()
            finally:
                if evaluator is not None:
                    evaluator.restore_reference()
                    evaluator.release()
                    self._timings.update({f"downstream_{k}": v for k, v in evaluator.stats.items()})
        # the map in the hparams' own order, whatever order they were measured in
        self.sensitivity_raw = {n: self.sensitivity_raw[n] for n in self._targets if n in self.sensitivity_raw}
        _log.log(self._log_level, "FastNAS sensitivity map: %d score evaluations in %.1f s (this run: %d)",
                 self.num_score_evals, self.sensitivity_time_s, self._evals_this_run)

    def _map_hparam(self, name: str, hp: Hparam, evaluator: DownstreamEvaluator | None,
                    bar: Any) -> None:
        """Measure one hparam's raw entry, choices from the smallest up, stopping at the first ~0 drop."""
        assert self.original_score is not None
        t0 = time.perf_counter()
        tol = self.config["zero_drop_tol"]
        space = self._space()
        downstream = evaluator is not None and evaluator.begin(hp)
        if evaluator is not None and not downstream:
            _log.log(self._log_level, "FastNAS %s: full evaluations (%s)", name, evaluator.fallback_reasons[hp.name])
        raw: list[list[Any]] = []
        at_zero = False
        for choice in hp.choices[:-1]:
            if at_zero:
                raw.append([choice, None])
            else:
                space.select({name: choice}, strict=False)
                score = None
                if downstream:
                    assert evaluator is not None
                    try:
                        score = evaluator.evaluate()
                        self._count_evaluation()
                    except ReplayError as exc:
                        _log.log(self._log_level, "FastNAS %s: full evaluations from here (%s)", name, exc)
                        downstream = False
                if score is None:
                    score = self._measure_score()
                drop = distributed.broadcast_object(self.original_score - score)
                raw.append([choice, drop])
                at_zero = drop <= tol
                bar.set_postfix_str(f"{name}={choice}/{hp.max} drop={drop:.4g}", refresh=False)
            bar.update(1)
        raw.append([hp.max, None])
        self.sensitivity_raw[name] = raw
        self.sensitivity_time_s += time.perf_counter() - t0

    def _map_across_ranks(self, todo: list[tuple[str, Hparam]], max_subnet: dict[str, int],
                          bar: Any) -> None:
        """The map measured by all ranks at once (see :mod:`._sharded_sensitivity`): the same raw
        entries, evaluation count and checkpoints as one process."""
        space = self._space()
        original = self.original_score
        assert original is not None
        evals, evals_this_run, seconds, start = (
            self.num_score_evals, self._evals_this_run, self.sensitivity_time_s, time.perf_counter())
        kept = 0

        def measure(name: str, choice: int) -> float:
            space.select({**max_subnet, name: choice}, strict=False)
            return original - self._measure_score()

        def finished(name: str, raw: list[list[Any]]) -> None:
            nonlocal kept
            kept += sum(1 for _, drop in raw if drop is not None)
            self.sensitivity_raw[name] = raw
            self.num_score_evals, self._evals_this_run = evals + kept, evals_this_run + kept
            self.sensitivity_time_s = seconds + time.perf_counter() - start
            self.save_search_checkpoint()

        def wave(decided: int, name: str, choice: int, drop: float) -> None:
            bar.set_postfix_str(f"{name}={choice} drop={drop:.4g}", refresh=False)
            bar.update(decided)

        stats = sharded_sensitivity_map(
            [(n, hp.choices) for n, hp in todo], measure, zero_drop_tol=self.config["zero_drop_tol"],
            on_finished=finished, on_wave=wave,
        )
        space.select(max_subnet, strict=False)
        _log.log(self._log_level, "FastNAS sensitivity map on %d ranks: %d waves, %d evaluations kept, %d discarded "
                 "(drawn above a ~0 drop)", distributed.world_size(), stats.waves, stats.kept, stats.discarded)
