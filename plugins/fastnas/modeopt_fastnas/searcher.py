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
   or loaded from its cache before the search) and kept exact as described in :mod:`.latency`.
5. *Finish*: select that subnet and re-estimate BatchNorm statistics for it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import torch
from pydantic import Field, JsonValue
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_autonas.space import (
    LATENCY_REPORT_MODES,
    Hparam,
    LatencyModel,
    SearchSpace,
    SubnetProfiler,
    get_search_space,
)
from modeopt_core import (
    ConfigError,
    ConstraintError,
    IterativeSearcher,
    ModelProfiler,
    distributed,
    make_forward_loop,
    recalibrate_batchnorm,
)
from modeopt_core.sdk import (
    DEFAULT_MIN_CALIBRATION_BATCHES,
    FiniteFloat,
    NonNegativeInt,
    SearchConfig,
    check_float,
    check_int,
    progress,
    state_error,
    unpack_dummy_input,
)

from ._sharded_sensitivity import sharded_sensitivity_map
from .latency import bisectable_thresholds, drop_slower_choices
from .sensitivity import PruningKey, monotone_drops, pruning_keys, subnet_for_threshold, threshold_candidates

__all__ = ["BN_CALIBRATION_MODES", "BinarySearcher"]

_log = logging.getLogger(__name__)

BN_CALIBRATION_MODES = ("auto", "each", "final", "off")
"""Values of the ``bn_calibration`` search-config key (see :class:`BinarySearcher`)."""


def _fmt(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class BinarySearcher(IterativeSearcher):
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
    * ``zero_drop_tol`` (default 1e-5): a drop at or below this counts as no drop; larger choices of that
      hparam are then not evaluated.
    * ``num_iters`` (default 100): cap on binary-search steps (it needs about log2 of the number of
      distinct drops).
    * ``latency_options`` (default None): options of the :class:`~modeopt_autonas.space.LatencyModel`
      built when a ``latency`` limit is given (``LATENCY_OPTIONS``: timer, runs, cache_dir, ...).
    * ``latency_report`` (default ``"final"``): which exported subnets are timed for the results'
      ``latency`` entry (``LATENCY_REPORT_MODES``; ``"visited"`` adds every binary-search step).

    Resuming: the checkpoint (``checkpoint`` key) holds the original score and the finished hparams'
    drops. It is tied to the search config, the search space and the dummy input but *not* to the
    constraints: a finished map is reused to prune the same model to another budget in milliseconds.
    """

    resume_compatible_keys = IterativeSearcher.resume_compatible_keys | {"latency_options", "latency_report"}

    # Assigned by reset_search() from default_state_dict.
    original_score: float | None
    sensitivity_raw: dict[str, list[list[Any]]]
    num_score_evals: int
    sensitivity_time_s: float
    thresholds_visited: list[dict[str, Any]]

    def __init__(self) -> None:
        super().__init__()
        self.space: SearchSpace | None = None
        self._profiler: SubnetProfiler | None = None
        self._targets: dict[str, Hparam] = {}  # the width hparams being pruned
        self._clear_run()

    def _clear_run(self) -> None:
        self._drops: dict[str, dict[int, float]] = {}  # monotone measured drops
        self._keys: dict[str, dict[int, PruningKey]] = {}  # pruning order (see .sensitivity)
        self._threshold: PruningKey = (0.0, 0.0, 0.0)
        self._best_key: PruningKey | None = None
        self._chosen_threshold: float | None = None
        self._bn_snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._sort_log: list[Any] = []  # the channel sort, undone if the search fails
        self._timings: dict[str, float] = {}
        self._evals_this_run = self._calibration_batches = 0
        self._bn_recalibrated = False
        self._dropped_choices: dict[str, list[int]] = {}  # widths predicted no faster than a wider one
        self._latency_report: dict[str, Any] | None = None

    # ----------------------------------------------------------------- configuration
    @property
    def default_search_config(self) -> SearchConfig:
        """Adds ``bn_calibration``, ``min_calibration_batches``, ``zero_drop_tol``; ``num_iters`` is 100."""
        return {
            **super().default_search_config,
            "num_iters": 100,
            "bn_calibration": "auto",
            "min_calibration_batches": DEFAULT_MIN_CALIBRATION_BATCHES,
            "zero_drop_tol": 1e-5,
            "latency_options": None,
            "latency_report": "final",
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
        check_float(merged, "zero_drop_tol", minimum=0.0)
        LatencyModel.check_options(merged["latency_options"])
        if merged["latency_report"] not in LATENCY_REPORT_MODES:
            raise ConfigError(f"search config latency_report={merged['latency_report']!r} is invalid; expected one "
                              f"of {LATENCY_REPORT_MODES}")
        return merged

    @property
    def _bn_mode(self) -> str:
        mode = self.config["bn_calibration"]
        if mode == "auto":
            return "each" if self.forward_loop is not None else "off"
        return str(mode)

    @property
    def _log_level(self) -> int:
        return self.log_level  # INFO when verbose (on rank 0 only under torch.distributed)

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
        args, kwargs = unpack_dummy_input(self.dummy_input)
        with self.space.driver_paused():
            self._profiler = SubnetProfiler(self.space, *args, **kwargs)
            if "latency" in self.constraints.names:
                options = {"verbose": self.config["verbose"], **(self.config["latency_options"] or {})}
                self._profiler.latency_model = LatencyModel.build(self.space, self.dummy_input, **options)
        return self._profiler

    @property
    def sensitivity_map(self) -> dict[str, dict[int, float]]:
        """``{hparam: {choice: score drop}}`` of the mapped hparams, monotone (ModelOpt's attribute name)."""
        return {n: monotone_drops(raw) for n, raw in getattr(self, "sensitivity_raw", {}).items()}

    def _space(self) -> SearchSpace:
        assert self.space is not None  # set by make_profiler, which search() calls first
        return self.space

    def _counter(self) -> SubnetProfiler:
        assert self._profiler is not None  # search() refuses constraints without a dummy input
        return self._profiler

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
        self.iter_num, self.history, self.best, self.stopped_early = 0, [], None, False
        self.thresholds_visited = []
        self.forget_evaluations()

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
        t0 = time.perf_counter()
        with self._restore_on_error():  # the sort is function-preserving, but a failed search undoes it too
            space.sort_by_importance(list(self._targets), log=self._sort_log)
        self._timings["sort_s"] = time.perf_counter() - t0
        self._bn_snapshot = [
            (buf, buf.detach().clone())
            for m in self.model.modules()
            if isinstance(m, _BatchNorm)
            for buf in m._buffers.values()
            if buf is not None
        ]
        with self._restore_on_error():
            if self.original_score is None:
                self.original_score = self._measure_score()
            _log.log(self._log_level, "FastNAS original score %.6g", self.original_score)
        self._timings["setup_s"] = time.perf_counter() - start

    def run_search(self) -> None:
        """Build (or finish) the sensitivity map, then bisect over its drop thresholds."""
        with self._restore_on_error():
            self._build_sensitivity_map()
            t0 = time.perf_counter()
            self._binary_search()
            self._timings["binary_search_s"] = time.perf_counter() - t0
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

    def _count(self, name: str, config: dict[str, int] | None = None) -> float:
        """``flops``, ``params`` or ``latency`` (predicted ms) of the active subnet or of ``config``."""
        return float(getattr(self._counter(), name)(config))

    def _calibrate(self) -> None:
        assert self.forward_loop is not None
        space = self._space()
        with space.driver_paused():  # the searcher manages the statistics itself
            self._calibration_batches = recalibrate_batchnorm(
                self.model, self.forward_loop, min_batches=self.config["min_calibration_batches"], strict=True
            )
        if space.driver is not None:
            space.driver.note_calibrated()

    def _measure_score(self) -> float:
        """The real score of the model as currently selected (after BN re-estimation when configured)."""
        if self._bn_mode == "each":
            self._calibrate()
        with self._space().driver_paused():
            score = super().eval_score()
        self.num_score_evals += 1
        self._evals_this_run += 1
        return score

    def _build_sensitivity_map(self) -> None:
        space = self._space()
        self.original_score = distributed.broadcast_object(self.original_score)  # rank 0's, on every rank
        assert self.original_score is not None
        tol = self.config["zero_drop_tol"]
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
        with bar:
            if distributed.is_distributed() and self.config["shard_evaluations"]:
                self._map_across_ranks(todo, max_subnet, bar)
                todo = []
            for name, hp in todo:
                t0 = time.perf_counter()
                space.select(max_subnet, strict=False)
                raw: list[list[Any]] = []
                at_zero = False
                for choice in hp.choices[:-1]:
                    if at_zero:
                        raw.append([choice, None])
                    else:
                        space.select({name: choice}, strict=False)
                        drop = distributed.broadcast_object(self.original_score - self._measure_score())
                        raw.append([choice, drop])
                        at_zero = drop <= tol
                        bar.set_postfix_str(f"{name}={choice}/{hp.max} drop={drop:.4g}", refresh=False)
                    bar.update(1)
                raw.append([hp.max, None])
                space.select({name: hp.max}, strict=False)
                self.sensitivity_raw[name] = raw
                self.sensitivity_time_s += time.perf_counter() - t0
                self.save_search_checkpoint()
        _log.log(self._log_level, "FastNAS sensitivity map: %d score evaluations in %.1f s (this run: %d)",
                 self.num_score_evals, self.sensitivity_time_s, self._evals_this_run)

    def _map_across_ranks(self, todo: list[tuple[str, Hparam]], max_subnet: dict[str, int], bar: Any) -> None:
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
        self.sensitivity_raw = {n: self.sensitivity_raw[n] for n in self._targets if n in self.sensitivity_raw}
        _log.log(self._log_level, "FastNAS sensitivity map on %d ranks: %d waves, %d evaluations kept, %d discarded "
                 "(drawn above a ~0 drop)", distributed.world_size(), stats.waves, stats.kept, stats.discarded)

    def _binary_search(self) -> None:
        counter = self._counter()
        self._drops = {n: monotone_drops(self.sensitivity_raw[n]) for n in self._targets}
        widest = {n: hp.max for n, hp in self._space().named_hparams(True)}
        self._keys = pruning_keys(self._drops, lambda name, choice: counter.flops({**widest, name: choice}))
        limits = self.constraints.limits
        if "latency" in limits:  # see .latency: prefer faster widths, keep the bisection exact
            self._keys, self._dropped_choices = drop_slower_choices(
                self._keys, lambda name, choice: counter.latency({**widest, name: choice}))
        thresholds = threshold_candidates(self._keys)
        if "latency" in limits:
            def fits(t: Any) -> bool:
                subnet = {**widest, **subnet_for_threshold(self._keys, t)}
                return all(self._count(n, subnet) <= limit for n, limit in limits.items())

            thresholds = bisectable_thresholds(thresholds, fits)
        lo, hi = -1, len(thresholds) - 1  # thresholds[hi] satisfies (checked up front); lo never does
        index = hi
        while self.iter_num < self.config["num_iters"]:
            self._threshold = thresholds[index]
            self.before_step()
            candidate = self.run_step()
            self.after_step(candidate)
            self.iter_num += 1
            self.thresholds_visited.append({
                "threshold": self._threshold[0],
                "key": list(self._threshold),
                "predicted_score": self.eval_score(),
                "flops": counter.flops(),
                "params": counter.params(),
                **({"latency": counter.latency()} if counter.latency_model is not None else {}),
                "satisfied": candidate["satisfied"],
                "subnet": dict(candidate["config"]),
            })
            if candidate["is_best"]:
                self._best_key = self._threshold
            if candidate["satisfied"]:
                hi = index
            else:
                lo = index
            if hi - lo <= 1:
                self.stopped_early = True
                break
            index = (lo + hi) // 2
        self._chosen_threshold = thresholds[hi][0]
        _log.log(self._log_level, "FastNAS binary search: %d steps over %d thresholds, chose drop threshold %.4g",
                 self.iter_num, len(thresholds), thresholds[hi][0])

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
            "pruned_hparams": list(self._targets),
        })
        latency = counter.latency_model
        if latency is not None:
            before_ms, after_ms = counter.latency(original), counter.latency()
            res["latency"] = {
                "before": before_ms, "after": after_ms, "unit": "ms",
                **(self._latency_report or {}),
                "slower_widths_skipped": {n: list(c) for n, c in self._dropped_choices.items()},
                "calibration": latency.calibration,
            }
            res["latency_ratio"] = after_ms / before_ms
            res["timings"]["latency_model_s"] = latency.stats["build_s"]
        return res
