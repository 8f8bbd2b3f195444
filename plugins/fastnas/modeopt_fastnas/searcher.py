"""``BinarySearcher``: FastNAS pruning = a per-hparam sensitivity map + a binary search over a drop threshold.

Phases of :meth:`BinarySearcher.search` on a model converted with the ``fastnas`` mode:

1. *Check*: resolve the budget on the original model with the analytic profiler and fail with a
   :class:`~modeopt_core.errors.ConstraintError` (naming the smallest achievable FLOPs/params) when even
   the smallest subnet misses it, before anything expensive runs.
2. *Sort and score*: reorder every channel group by importance (function-preserving) so that a width
   ``k`` keeps the ``k`` most important channels, then score the original model.
3. *Sensitivity map* (the only expensive phase): for each configurable width hparam, and each of its
   choices from the smallest up, the score drop when only that hparam takes that choice. Once a drop is
   ~0 the larger choices are not evaluated. The map is checkpointed after each hparam.
4. *Binary search*: a threshold ``t`` selects, for every hparam, its smallest choice whose (monotone)
   drop is <= ``t``. The subnet only changes when ``t`` crosses a drop in the map, so the search is an
   exact bisection over those values; each step is an analytic FLOPs/params count (microseconds), no
   model run. The result is the lowest threshold whose subnet meets every constraint. A ``latency``
   constraint is checked against a :class:`~modeopt_autonas.space.LatencyModel` of the space (built
   or loaded from its cache before the search) and kept exact as described in :mod:`.latency`; the
   chosen subnet is then timed against the original, and while it misses the limit as measured the
   model is refitted through that measurement and the bisection runs again (``latency_verify``).
5. *Finish*: select that subnet and re-estimate BatchNorm statistics for it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, JsonValue
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_autonas.space import LATENCY_REPORT_MODES, LatencyModel, SubnetProfiler, get_search_space
from modeopt_core import (
    ConfigError,
    ConstraintError,
    IterativeSearcher,
    ModelProfiler,
    distributed,
    make_forward_loop,
)
from modeopt_core.sdk import (
    DEFAULT_MIN_CALIBRATION_BATCHES,
    FiniteFloat,
    NonNegativeInt,
    SearchConfig,
    check_float,
    check_int,
    state_error,
    unpack_dummy_input,
)

from .boundary import BoundarySelector
from .downstream import DEFAULT_CACHE_MB
from .map_builder import DEFAULT_MAP_CALIBRATION_SAMPLES, SensitivityMapBuilder
from .ranking import IMPORTANCE_KINDS, ChannelRanker
from .scores import BatchScore
from .selection import SELECTION_ORDERS
from .sensitivity import monotone_drops, subnet_for_threshold

__all__ = ["BN_CALIBRATION_MODES", "BinarySearcher"]

_log = logging.getLogger(__name__)

BN_CALIBRATION_MODES = ("auto", "each", "final", "off")
"""Values of the ``bn_calibration`` search-config key (see :class:`BinarySearcher`)."""


def _fmt(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class BinarySearcher(ChannelRanker, SensitivityMapBuilder, BoundarySelector):
    """FastNAS search (see the module doc). Needs ``score_func`` and a ``flops``, ``params`` and/or ``latency`` budget.

    Search-config keys on top of the searcher base's:

    * ``bn_calibration``: ``"each"`` re-estimates BatchNorm statistics from the calibration data
      (``forward_loop``, or the first ``max_iter_data_loader`` batches of ``data_loader``, drawn once and
      kept in memory so that every re-estimation sees the same data) before every score
      evaluation and for the returned model; ``"final"`` only for the returned model; ``"off"`` never;
      ``"auto"`` (default) is ``"each"`` when calibration data is given, else ``"off"``. Per-evaluation
      calibration costs one forward pass over the calibration batches per evaluation (often as much as
      the score itself) but measures each pruned layer with statistics that fit it; without it a drop
      includes the damage of stale statistics, which fine-tuning would repair.
    * ``min_calibration_batches`` (default 8): calibration that sees fewer batches raises
      :class:`~modeopt_core.calibration.CalibrationError` naming the count (never a silent skip).
    * ``map_calibration_samples`` (default 512): with ``"each"`` and a ``data_loader``, the original
      score and the sensitivity map re-estimate BatchNorm statistics on evenly spaced drawn batches
      holding at least this many samples (and ``min_calibration_batches`` batches); boundary
      evaluations and the returned model use all of them. A map entry only compares a narrowing with
      the original, so its statistics need not see every batch; 0: all batches everywhere.
    * ``zero_drop_tol`` (default 1e-5): a drop at or below this counts as no drop; larger choices of that
      hparam are then not evaluated.
    * ``num_iters`` (default 100): cap on binary-search steps (it needs about log2 of the number of
      distinct drops).
    * ``latency_options`` (default None): options of the :class:`~modeopt_autonas.space.LatencyModel`
      built when a ``latency`` limit is given (``LATENCY_OPTIONS``: timer, runs, cache_dir, ...).
    * ``latency_report`` (default ``"final"``): which exported subnets are timed for the results'
      ``latency`` entry (``LATENCY_REPORT_MODES``; ``"visited"`` adds every binary-search step).
    * ``importance`` (default ``"auto"``): how channels are ranked before the map: ``"auto"`` measures
      one probe subnet (every width scaled alike to the budget) under ``"contribution"`` and under
      ``"activation"`` (when there is data to rank on) and keeps the ranking that scores higher (two
      score evaluations; :mod:`.ranking`, results ``importance``, ``importance_probe``);
      ``"contribution"`` by the scale a channel leaves with (the affine weight of a BatchNorm after
      it, else its producers' norms) times the norms of the weights reading it, ``"weight"`` by the
      L1 norms of the weights producing them (ModelOpt-like), ``"activation"`` by their contribution
      on the calibration data (mean absolute input times the weights reading it), or without data on
      the batches of a ready score object (:class:`~modeopt_fastnas.BatchScore`).
    * ``latency_verify`` (default 4): with a ``latency`` limit, the most times the chosen subnet's export
      is timed against the original's; when it misses the limit as measured, the latency model is
      refitted through the measurement and the bisection runs again
      (:func:`~modeopt_autonas.space.meet_latency_limit`; results ``latency.verification``). 0: trust
      the prediction.

    Resuming: the checkpoint (``checkpoint`` key) holds the original score, the ranking ``"auto"``
    chose and the finished hparams' drops. It is tied to the search config, the search space and the
    dummy input but *not* to the constraints: a finished map is reused to prune the same model to
    another budget in milliseconds.
    """

    resume_compatible_keys = IterativeSearcher.resume_compatible_keys | {
        "downstream_cache_mb", "selection", "params_weight", "boundary_evals", "latency_options", "latency_report",
        "latency_verify"}
    """These change how fast entries are measured or how the subnet is picked from the map, never the map."""

    # ----------------------------------------------------------------- configuration
    @property
    def default_search_config(self) -> SearchConfig:
        """Adds ``bn_calibration``, ``min_calibration_batches``, ``zero_drop_tol``; ``num_iters`` is 100."""
        return {
            **super().default_search_config,
            "num_iters": 100,
            "bn_calibration": "auto",
            "min_calibration_batches": DEFAULT_MIN_CALIBRATION_BATCHES,
            "map_calibration_samples": DEFAULT_MAP_CALIBRATION_SAMPLES,
            "zero_drop_tol": 1e-5,
            "downstream_cache_mb": DEFAULT_CACHE_MB,
            "selection": ("drop",),
            "params_weight": 1.0,
            "boundary_evals": 0,
            "latency_options": None,
            "latency_report": "final",
            "latency_verify": 4,
            "importance": "auto",
        }

    @property
    def default_state_dict(self) -> dict[str, Any]:
        """Adds the original score, the raw drops per finished hparam, evaluation count and time."""
        return {
            **super().default_state_dict,
            "original_score": None,
            "sensitivity_raw": {},
            "num_score_evals": 0,
            "sensitivity_time_s": 0.0,
            "thresholds_visited": [],
            "importance_chosen": None,
            "importance_probe": {},
        }

    @property
    def state_schema(self) -> dict[str, Any]:
        """Adds the types of the FastNAS state (the map's entries are checked by :meth:`validate_state`)."""
        return {
            **super().state_schema,
            "original_score": FiniteFloat | None,
            "sensitivity_raw": dict[str, list[list[int | float | None]]],
            "num_score_evals": NonNegativeInt,
            "sensitivity_time_s": Annotated[float, Field(ge=0, allow_inf_nan=False)],
            "thresholds_visited": list[dict[str, JsonValue]],
            "importance_chosen": Literal["contribution", "activation"] | None,
            "importance_probe": dict[Literal["contribution", "activation"], FiniteFloat],
        }

    def validate_state(self, state: Mapping[str, Any]) -> None:
        """Also: each mapped hparam is a prunable hparam of this space, its entry lists exactly its choices
        with a finite drop or None (always None for the widest), and a map comes with the original score."""
        super().validate_state(state)
        original = state["original_config"]
        choices = {n: hp.choices for n, hp in self._space().named_hparams(True)}
        if original is not None and (set(original) != set(choices) or any(
                type(original[n]) is not int or original[n] not in c for n, c in choices.items())):
            raise state_error("original_config", "not a subnet of this search space (unknown names or choices)")
        if state["sensitivity_raw"] and state["original_score"] is None:
            raise state_error("original_score", "a sensitivity map without the original score")
        for name, raw in state["sensitivity_raw"].items():
            where = f"sensitivity_raw[{name[:60]!r}]"
            hp = self._targets.get(name)
            if hp is None:
                raise state_error(where, "not a prunable hparam of this search space")
            if [entry[0] if len(entry) == 2 else None for entry in raw] != list(hp.choices):
                raise state_error(where, f"expected [[choice, drop], ...] for the choices {list(hp.choices)}")
            for choice, drop in raw:
                if type(choice) is not int or not (drop is None or (type(drop) is float and math.isfinite(drop))):
                    raise state_error(where, f"choice {str(choice)[:20]} has drop {str(drop)[:20]}: expected a "
                                             "finite float or null")
            if raw[-1][1] is not None:
                raise state_error(where, "the widest choice has a drop (it is never evaluated)")

    def sanitize_search_config(self, config: Mapping[str, Any] | None) -> SearchConfig:
        """Also checks the FastNAS keys and that ``bn_calibration`` has the data it needs."""
        merged = super().sanitize_search_config(config)
        mode = merged["bn_calibration"]
        if mode not in BN_CALIBRATION_MODES:
            raise ConfigError(f"search config bn_calibration={mode!r} is invalid; expected one of {BN_CALIBRATION_MODES}")
        has_data = merged["data_loader"] is not None or merged["forward_loop"] is not None
        if mode in ("each", "final") and not has_data:
            raise ConfigError(
                f"search config bn_calibration={mode!r} needs calibration data: pass data_loader (or forward_loop), "
                "or set bn_calibration='off'"
            )
        check_int(merged, "min_calibration_batches", minimum=1)
        check_int(merged, "map_calibration_samples", minimum=0)
        check_float(merged, "zero_drop_tol", minimum=0.0)
        check_float(merged, "downstream_cache_mb", minimum=0.0)
        check_float(merged, "params_weight", minimum=0.0)
        check_int(merged, "boundary_evals", minimum=0)
        check_int(merged, "latency_verify", minimum=0)
        if merged["importance"] not in IMPORTANCE_KINDS:
            raise ConfigError(f"search config importance={merged['importance']!r} is invalid; expected one of "
                              f"{IMPORTANCE_KINDS}")
        if merged["importance"] == "activation" and not has_data and not isinstance(merged["score_func"], BatchScore):
            raise ConfigError("search config importance='activation' ranks channels on calibration data: pass "
                              "data_loader (or forward_loop), a ready score object (its batches are used), or use "
                              "importance='weight'")
        selection = merged["selection"]
        if isinstance(selection, str):
            selection = (selection,)
        if not selection or any(o not in SELECTION_ORDERS for o in selection):
            raise ConfigError(f"search config selection={merged['selection']!r} is invalid; expected a non-empty "
                              f"list of {SELECTION_ORDERS}")
        merged["selection"] = tuple(selection)
        LatencyModel.check_options(merged["latency_options"])
        if merged["latency_report"] not in LATENCY_REPORT_MODES:
            raise ConfigError(f"search config latency_report={merged['latency_report']!r} is invalid; expected one "
                              f"of {LATENCY_REPORT_MODES}")
        return merged

    # ----------------------------------------------------------------- search space plumbing
    def make_profiler(self) -> ModelProfiler | None:
        """The analytic :class:`SubnetProfiler` of the model's search space (one forward pass, then free),
        with a :class:`LatencyModel` attached when a ``latency`` limit is given."""
        self.space = get_search_space(self.model)
        space_hps = {id(self.space.group_hparam(g.id)) for g in self.space.structure.groups}
        space_hps |= {id(hp) for hp in self.space.block_hparams().values()}  # blocks that may be dropped
        self._targets = {n: hp for n, hp in self.space.named_hparams(True) if id(hp) in space_hps}
        if self.dummy_input is None:
            return None
        latency = "latency" in self.constraints.names
        if latency and self.config["selection"][0] != "drop" and self.config["boundary_evals"] == 0:
            raise ConfigError(
                f"search config selection={self.config['selection']!r} with a latency limit: the measured "
                "latency check runs on the 'drop' order's subnet, so with boundary_evals=0 put 'drop' "
                "first in selection (or give boundary_evals > 0 to judge the orders' subnets)")
        args, kwargs = unpack_dummy_input(self.dummy_input)
        with self.space.driver_paused():
            self._profiler = SubnetProfiler(self.space, *args, **kwargs)
            if latency:
                options = {"verbose": self.config["verbose"], **(self.config["latency_options"] or {})}
                self._profiler.latency_model = LatencyModel.build(self.space, self.dummy_input, **options)
        return self._profiler

    @property
    def sensitivity_map(self) -> dict[str, dict[int, float]]:
        """``{hparam: {choice: score drop}}`` of the mapped hparams, monotone (ModelOpt's attribute name)."""
        return {n: monotone_drops(raw) for n, raw in getattr(self, "sensitivity_raw", {}).items()}

    def select(self, config: Mapping[str, Any]) -> None:
        self._space().select(config, strict=False)

    def current_config(self) -> dict[str, Any]:
        return dict(self._space().config())

    def sample(self) -> dict[str, Any]:
        """Select the subnet of the current threshold (non-width hparams stay at their max)."""
        space = self._space()
        subnet = {n: hp.max for n, hp in space.named_hparams(True)}
        subnet.update(subnet_for_threshold(self._keys, self._threshold))
        space.select(subnet, strict=False)
        return self.current_config()

    def eval_score(self) -> float:
        """During the binary search: the predicted score ``original_score - threshold`` (no model run)."""
        assert self.original_score is not None
        return self.original_score - self._threshold[0]

    def is_better(self, candidate: dict[str, Any], best: dict[str, Any]) -> bool:
        """A lower pruning key (less predicted damage, then less removed) is better; equal scores tie often."""
        return self._best_key is None or self._threshold < self._best_key

    def fingerprint(self) -> dict[str, Any]:
        """The base fingerprint without the constraints, plus the search space's width choices."""
        fp = super().fingerprint()
        fp.pop("constraints", None)
        fp["search_space"] = {n: list(hp.choices) for n, hp in self._targets.items()}
        return fp

    def reset_search(self) -> None:
        """Also clears the per-run figures (a searcher object may run several searches)."""
        super().reset_search()
        self._clear_run()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Keeps the map and the original score; the binary search (milliseconds) always runs afresh."""
        super().load_state_dict(state)
        self._reset_bisection()

    # ----------------------------------------------------------------- lifecycle
    def before_search(self) -> None:
        """Check the budget, sort channels by importance and score the original model."""
        start = time.perf_counter()
        if not self.constraints:
            raise ConstraintError(
                "FastNAS needs a budget: pass constraints such as {'flops': '50%'} and/or {'params': 2e6}"
            )
        space = self._space()
        if not self._targets:
            raise ConstraintError("the search space has no configurable width hparam; nothing can be pruned")
        others = [n for n, _ in space.named_hparams(True) if n not in self._targets]
        if others:
            _log.log(self._log_level, "FastNAS prunes widths only; these hparams stay at their max: %s", others)
        space.sample("original")
        super().before_search()  # resolves percentages on the original model, records original_config
        self._check_feasible()
        if self.config["data_loader"] is not None and self._bn_mode != "off":
            # Draw the calibration batches once: a shuffling loader would give every re-estimation other
            # data, adding noise to the map and making a resumed search differ from an uninterrupted one.
            drawn = list(itertools.islice(self.config["data_loader"], self.config["max_iter_data_loader"]))
            self.forward_loop = make_forward_loop(drawn, collect_func=self.config["collect_func"])
            self._draw_calibration_inputs(drawn)
        t0 = time.perf_counter()
        with self._restore_on_error():  # the sort is function-preserving, but a failed search undoes it too
            self._rank_channels()
        self._timings["sort_s"] = time.perf_counter() - t0
        self._bn_snapshot = self._snapshot_bn()
        with self._restore_on_error():
            if self.original_score is None:
                with self._map_calibration():  # the reference of the map's drops: measured the way its entries are
                    self.original_score = self._measure_score()
                self._calibrated_at_max = self._bn_mode == "each"
            _log.log(self._log_level, "FastNAS original score %.6g", self.original_score)
        self._timings["setup_s"] = time.perf_counter() - start

    def run_search(self) -> None:
        """Build (or finish) the sensitivity map, then bisect over its drop thresholds."""
        with self._restore_on_error():
            self._build_sensitivity_map()
            t0 = time.perf_counter()
            self._binary_search()
            self._timings["binary_search_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._verify_latency()
            self._timings["latency_verify_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._judge_boundary()
            self._timings["boundary_s"] = time.perf_counter() - t0
        self.save_search_checkpoint()

    def after_search(self) -> None:
        """Select the best subnet and re-estimate BatchNorm statistics for it."""
        with self._restore_on_error():
            super().after_search()
            if self._bn_mode in ("each", "final") and self.forward_loop is not None:
                t0 = time.perf_counter()
                self._calibrate()
                self._bn_recalibrated = self._calibration_batches > 0
                self._timings["final_calibration_s"] = time.perf_counter() - t0
            elif any(isinstance(m, _BatchNorm) for m in self.model.modules()):
                _log.log(
                    self._log_level,
                    "BatchNorm statistics were not re-estimated for the pruned subnet (no calibration data or "
                    "bn_calibration='off'); re-estimate them (modeopt_core.calibration.recalibrate_batchnorm) or "
                    "fine-tune before evaluating",
                )
            latency = self._counter().latency_model
            if latency is not None and self.config["latency_report"] != "off":
                t0 = time.perf_counter()
                visited = [t["subnet"] for t in self.thresholds_visited] if self.config["latency_report"] == "visited" else []
                self._latency_report = distributed.run_on_main(lambda: latency.report(self.current_config(), visited))
                self._timings["latency_report_s"] = time.perf_counter() - t0

    # ----------------------------------------------------------------- phases
    def _smallest_subnet(self) -> dict[str, int]:
        subnet = {n: hp.max for n, hp in self._space().named_hparams(True)}
        subnet.update({n: hp.min for n, hp in self._targets.items()})
        return subnet

    def _check_feasible(self) -> None:
        smallest = self._smallest_subnet()
        limits = self.constraints.limits
        shown = ["flops", "params", *(n for n in limits if n not in ("flops", "params"))]
        values = {n: self._count(n, smallest) for n in shown}
        reference = {n: self._count(n) for n in shown}
        missed = [n for n in limits if values[n] > limits[n]]
        if not missed:
            return
        unit = {"latency": " ms"}
        want = ", ".join(f"{n} <= {_fmt(limits[n])}{unit.get(n, '')} ({100 * limits[n] / reference[n]:.1f}%)"
                         for n in missed)
        got = " and ".join(f"{n} {_fmt(v)}{unit.get(n, '')} ({100 * v / reference[n]:.1f}%)" for n, v in values.items())
        raise ConstraintError(
            f"the budget {want} cannot be met: the smallest subnet of this search space has {got} of the original. "
            "Relax the constraint, or allow narrower layers in the fastnas config (smaller ratios, a smaller "
            "channel_divisor/feature_divisor, a larger min_width_steps, fewer frozen modules)"
        )

    @contextlib.contextmanager
    def _restore_on_error(self) -> Iterator[None]:
        """On any error put back the BatchNorm statistics, the original subnet and the channel order:
        the model is then bit for bit as the search found it."""
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for buf, saved in self._bn_snapshot:
                    buf.copy_(saved)
            if self.original_config is not None and self.space is not None:
                with contextlib.suppress(Exception):
                    self.space.select(self.original_config, strict=False)
            if self.space is not None:
                self.space.undo_sort(self._sort_log)
            raise

    # ----------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        """Adds the sensitivity map, the chosen subnet and threshold, FLOPs/params before and after,
        score-evaluation counts, timings and the thresholds the binary search visited."""
        with self._restore_on_error():  # a search that cannot report leaves the model as it found it
            return self._results()

    def _results(self) -> dict[str, Any]:
        res = super().results()
        counter = self._counter()
        original = self.original_config or {}
        before = {"flops": counter.flops(original), "params": counter.params(original)}
        after = {"flops": counter.flops(), "params": counter.params()}
        res.update({
            "original_score": self.original_score,
            "predicted_score": self.best["score"] if self.best is not None else None,
            "threshold": self._chosen_threshold,
            "sensitivity_map": {n: {int(c): d for c, d in self._drops.get(n, {}).items()} for n in self._targets},
            "sensitivity_raw": {n: [list(e) for e in raw] for n, raw in self.sensitivity_raw.items()},
            "subnet": self.current_config(),
            "flops": {"before": before["flops"], "after": after["flops"]},
            "params": {"before": before["params"], "after": after["params"]},
            "flops_ratio": after["flops"] / before["flops"] if before["flops"] else math.nan,
            "params_ratio": after["params"] / before["params"] if before["params"] else math.nan,
            "num_score_evals": self._evals_this_run,
            "num_score_evals_total": self.num_score_evals,
            "thresholds_visited": [dict(t) for t in self.thresholds_visited],
            "timings": {**self._timings, "sensitivity_s": self.sensitivity_time_s},
            "bn_recalibrated": self._bn_recalibrated,
            "calibration_batches": self._calibration_batches,
            "map_calibration_batches": (None if self._map_calibration_inputs is None
                                        else len(self._map_calibration_inputs)),
            "pruned_hparams": list(self._targets),
            "boundary": [{k: v for k, v in e.items()} for e in self._boundary],
            "boundary_evals": self._boundary_evals,
            "selection_order": self._chosen_order,
            **self._ranking_results(),
        })
        latency = counter.latency_model
        if latency is not None:
            before_ms, after_ms = latency.reference_ms, counter.latency()  # the reference: also after a refit
            res["latency"] = {
                "before": before_ms, "after": after_ms, "unit": "ms",
                **(self._latency_report or {}),
                "slower_widths_skipped": {n: list(c) for n, c in self._dropped_choices.items()},
                "verification": self._latency_check,
                "calibration": latency.calibration,
            }
            res["latency_ratio"] = after_ms / before_ms
            res["timings"]["latency_model_s"] = latency.stats["build_s"]
        return res
