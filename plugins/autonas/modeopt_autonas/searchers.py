"""Subnet searchers over a NAS search space: evolutionary (the ``autonas`` default) and random.

Both build on :class:`modeopt_core.searcher.IterativeSearcher` (history, best, cache of evaluated
subnets, resumable checkpoints, progress bar) and add what a supernet needs:

* constraints (``flops``/``params``) are counted analytically by :class:`SubnetProfiler` from the
  hparam values (one forward pass at the start, none per candidate), and ``latency`` is predicted by
  a :class:`~modeopt_autonas.space.LatencyModel` built (or loaded from its cache) before the search;
  percentages refer to the original subnet (for latency: its measured, exported latency); a limit
  that even the smallest subnet misses is rejected before searching;
* candidates are drawn until one satisfies the constraints and was not evaluated before (at most
  ``sample_tries`` draws, all from the checkpointed generator), so iterations are not wasted;
* before a candidate is scored, its batch-norm statistics are re-estimated from ``data_loader`` or
  ``forward_loop`` (constraint checks never recalibrate); the chosen subnet is recalibrated at the end;
* the search state is checkpointed after every iteration (unless writing would exceed 10% of the
  search time; then as often as that allows), so a killed search resumed with the same ``checkpoint``
  path ends exactly as an uninterrupted one (given deterministic calibration data and scoring).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_core import (
    CalibrationError,
    ConfigError,
    ConstraintError,
    IterativeSearcher,
    ModelProfiler,
    SearchError,
    distributed,
    recalibrate_batchnorm,
)
from modeopt_core.sdk import (
    DEFAULT_MIN_CALIBRATION_BATCHES,
    FiniteFloat,
    SearchConfig,
    SubnetConfig,
    check_bool,
    check_float,
    check_int,
    state_error,
    unpack_dummy_input,
)

from .space import (
    LATENCY_REPORT_MODES,
    LatencyModel,
    SearchSpace,
    SubnetProfiler,
    get_search_space,
    meet_latency_limit,
)
from .training import _bypass, _has_tracked_batchnorm, supernet_sampler

__all__ = ["EvolveSearcher", "NASSearcher", "RandomSearcher"]

logger = logging.getLogger(__name__)


class _AtConfig:
    """A profiler view counting one fixed subnet (to resolve percentage limits on the original)."""

    def __init__(self, profiler: SubnetProfiler, config: Mapping[str, int]) -> None:
        self._profiler, self._config = profiler, dict(config)

    def flops(self) -> float:
        return self._profiler.flops(self._config)

    def params(self) -> float:
        return self._profiler.params(self._config)

    def latency(self) -> float:
        return self._profiler.latency(self._config)


class _Member(BaseModel):
    """A scored candidate of an evolutionary generation, as checkpointed."""

    model_config = ConfigDict(strict=True, extra="forbid")

    config: SubnetConfig
    score: FiniteFloat


class NASSearcher(IterativeSearcher):
    """Base of the searchers over a model converted by ``autonas`` (or another NAS mode).

    Subclasses implement :meth:`propose` (a config drawn with ``self.rng``). Config keys added to the
    core's: ``calibrate_bn`` (re-estimate batch-norm statistics per scored candidate, default True;
    False scores with the supernet's statistics), ``min_calibration_batches`` (fewer calibration
    batches raise, default 8), ``sample_tries`` (draws per iteration to find an unseen candidate
    that satisfies the constraints, default 100), ``latency_options`` (options of the
    :class:`~modeopt_autonas.space.LatencyModel` built for a ``latency`` limit, default None) and
    ``latency_report`` (``"final"``: time the chosen and the original subnet's exports for the results;
    ``"visited"``: also every scored candidate; ``"off"``) and ``latency_verify`` (default 4: the most
    times the best candidate's export is timed against a ``latency`` limit; while it misses as
    measured, the latency model is refitted through the measurement and the best scored candidate
    that still fits is taken, see :func:`~modeopt_autonas.space.meet_latency_limit`; 0: trust the
    prediction).
    """

    # A checkpoint after every iteration, unless writing it (it grows with the history) would take
    # more than 10% of the search time; then as often as that allows. Resuming replays the
    # iterations since the last write with the same random draws, so the result is the same.
    checkpoint_interval_s: ClassVar[float] = 0.0
    resume_compatible_keys = IterativeSearcher.resume_compatible_keys | {"latency_report", "latency_verify"}
    """These only change what happens after the search, never its candidates."""
    checkpoint_max_overhead: ClassVar[float | None] = 0.1

    space: SearchSpace
    calibration_batches: int
    _restore_point: tuple[dict[str, int], dict[str, torch.Tensor]]  # subnet and BN buffers at the start

    @property
    def default_search_config(self) -> SearchConfig:
        return {
            **super().default_search_config,
            "num_iters": 100,
            "calibrate_bn": True,
            "min_calibration_batches": DEFAULT_MIN_CALIBRATION_BATCHES,
            "sample_tries": 100,
            "latency_options": None,
            "latency_report": "final",
            "latency_verify": 4,
        }

    def sanitize_search_config(self, config: Mapping[str, Any] | None) -> SearchConfig:
        merged = super().sanitize_search_config(config)
        check_bool(merged, "calibrate_bn")
        check_int(merged, "min_calibration_batches", minimum=1)
        check_int(merged, "sample_tries", minimum=1)
        check_int(merged, "latency_verify", minimum=0)
        LatencyModel.check_options(merged["latency_options"])
        if merged["latency_report"] not in LATENCY_REPORT_MODES:
            raise ConfigError(f"search config latency_report={merged['latency_report']!r} is invalid; expected one "
                              f"of {LATENCY_REPORT_MODES}")
        return merged

    # ---- space access -----------------------------------------------------------------------------
    def make_profiler(self) -> ModelProfiler | None:
        self.space = get_search_space(self.model)
        if self.dummy_input is None:
            return None
        args, kwargs = unpack_dummy_input(self.dummy_input)
        with _bypass(self.model):
            profiler = SubnetProfiler(self.space, *args, **kwargs)
            if "latency" in self.constraints.names:
                options = {"verbose": self.config["verbose"], **(self.config["latency_options"] or {})}
                profiler.latency_model = LatencyModel.build(self.space, self.dummy_input, **options)
        return profiler

    def select(self, config: Mapping[str, Any]) -> None:
        self.space.select(config)
        sampler = supernet_sampler(self.model)
        if sampler is not None:
            sampler.note_selection()

    def current_config(self) -> dict[str, Any]:
        return self.space.config()

    def validate_state(self, state: Mapping[str, Any]) -> None:
        """Also: every subnet config recorded in a resumed state is a subnet of this space."""
        super().validate_state(state)
        choices = self.choices()
        recorded = [(f"history[{i}].config", r["config"]) for i, r in enumerate(state["history"])]
        recorded += [("best.config", state["best"]["config"])] if state["best"] is not None else []
        recorded += [("original_config", state["original_config"])] if state["original_config"] is not None else []
        for key in ("population", "parents"):
            recorded += [(f"{key}[{i}].config", m["config"]) for i, m in enumerate(state.get(key, []))]
        for where, config in recorded:
            if set(config) != set(choices) or any(type(config[n]) is not int or config[n] not in c
                                                  for n, c in choices.items()):
                raise state_error(where, "not a subnet of this search space (unknown names or choices)")

    def choices(self) -> dict[str, tuple[int, ...]]:
        """Choices of every configurable hparam, in the space's order."""
        return {name: hp.choices for name, hp in self.space.named_hparams(True)}

    def random_config(self) -> dict[str, int]:
        """A uniformly random subnet drawn with ``self.rng`` (not selected)."""
        return {name: self.rng.choice(choices) for name, choices in self.choices().items()}

    # ---- sampling ---------------------------------------------------------------------------------
    @abstractmethod
    def propose(self) -> dict[str, int]:
        """Draw one candidate config with ``self.rng`` (not selected)."""

    def _fits(self, config: Mapping[str, int]) -> bool:
        if not self.constraints:
            return True
        assert isinstance(self.profiler, SubnetProfiler)
        limits = self.constraints.limits
        values = {"flops": self.profiler.flops, "params": self.profiler.params, "latency": self.profiler.latency}
        return all(values[name](config) <= limit for name, limit in limits.items())

    def sample(self) -> dict[str, Any]:
        """Up to ``sample_tries`` proposals until one fits the constraints and is unseen; select it."""
        config = self.propose()
        for _ in range(self.config["sample_tries"] - 1):
            if self._fits(config) and not self.was_evaluated(config):
                break
            config = self.propose()
        self.select(config)
        return config

    # ---- lifecycle --------------------------------------------------------------------------------
    def before_search(self) -> None:
        """Checks the constraints against the space and the calibration data, then starts the search."""
        if not any(True for _ in self.space.named_hparams(True)):
            raise SearchError("the search space has no configurable hparam: there is nothing to search")
        self._restore_point = (
            self.current_config(),
            {
                name: buf.clone()
                for module_name, m in self.model.named_modules()
                if isinstance(m, _BatchNorm)
                for name, buf in m.named_buffers(prefix=module_name)
            },
        )
        if self.constraints and not self.constraints.is_resolved:
            assert isinstance(self.profiler, SubnetProfiler)
            original = {n: hp.original for n, hp in self.space.named_hparams(True)}
            self.constraints = self.constraints.resolve(_AtConfig(self.profiler, original))
        super().before_search()
        self._check_satisfiable()
        self._check_calibration()

    def _check_satisfiable(self) -> None:
        if not self.constraints:
            return
        assert isinstance(self.profiler, SubnetProfiler)
        smallest = {n: hp.min for n, hp in self.space.named_hparams(True)}
        limits = self.constraints.limits
        values = {n: float(getattr(self.profiler, n)(smallest)) for n in limits}
        missed = {n: (values[n], lim) for n, lim in limits.items() if values[n] > lim}
        if missed:
            detail = ", ".join(
                f"{n}: smallest subnet {v:.3f} ms > limit {lim:.3f} ms" if n == "latency"
                else f"{n}: smallest subnet {v:,.0f} > limit {lim:,.0f}" for n, (v, lim) in missed.items())
            raise ConstraintError(
                f"no subnet can satisfy the constraints {self.constraints.to_dict()} ({detail}); relax the "
                "limits or convert with rules that allow smaller subnets (smaller channel ratios, min_depth)"
            )

    def _check_calibration(self) -> None:
        self.calibration_batches = 0
        has_bn = _has_tracked_batchnorm(self.model)
        if not has_bn or not self.config["calibrate_bn"]:
            if has_bn:
                logger.log(
                    logging.INFO if self.config["verbose"] else logging.DEBUG,
                    "calibrate_bn=False: candidates are scored with the supernet's batch-norm statistics",
                )
            return
        if self.forward_loop is None:
            sampler = supernet_sampler(self.model)
            self.forward_loop = sampler.kept_forward_loop() if sampler is not None else None
            if self.forward_loop is not None:
                logger.log(logging.INFO if self.config["verbose"] else logging.DEBUG,
                           "calibrating candidates on the %d training batches the supernet kept",
                           len(sampler.kept) if sampler is not None else 0)
        if self.forward_loop is None:
            raise ConfigError(
                "the model has batch-norm layers whose statistics must be re-estimated for every candidate "
                "subnet before it is scored; pass config['data_loader'] (or 'forward_loop'), or set "
                "config['calibrate_bn'] = False to score with the supernet's statistics"
            )
        try:  # once up front, so that too little calibration data fails before the first iteration
            self._recalibrate()
        except CalibrationError as exc:
            raise ConfigError(
                f"calibration data for the search is insufficient: {exc}. Pass more batches (data_loader / "
                "max_iter_data_loader) or lower config['min_calibration_batches']"
            ) from exc

    def _recalibrate(self) -> None:
        if not self.config["calibrate_bn"] or self.forward_loop is None:
            return
        with _bypass(self.model) as sampler:
            seen = recalibrate_batchnorm(
                self.model, self.forward_loop, min_batches=self.config["min_calibration_batches"], strict=True
            )
            if sampler is not None and seen:
                sampler.note_calibrated()
        self.calibration_batches = seen

    def eval_score(self) -> float:
        """Re-estimate the candidate's batch-norm statistics, then score it."""
        self._recalibrate()
        return super().eval_score()

    def after_search(self) -> None:
        """Select the best subnet (or the starting one) and re-estimate its batch-norm statistics; with a
        latency model, time the exported subnet (``latency_report``)."""
        super().after_search()
        self._latency_check: dict[str, Any] | None = None
        self._verify_latency()
        self._recalibrate()
        self._latency_report: dict[str, Any] | None = None
        latency = self._latency_model()
        if latency is not None and self.config["latency_report"] != "off":
            visited = ([c["config"] for c in self.history if c["satisfied"] and not c["cached"]]
                       if self.config["latency_report"] == "visited" else [])
            config = self.current_config()
            self._latency_report = distributed.run_on_main(lambda: latency.report(config, visited))

    def _verify_latency(self) -> None:
        """Time the best candidate against the latency limit; while it misses, refit the latency model
        and take the best scored candidate that still fits (no new score evaluation)."""
        latency = self._latency_model()
        limit = self.constraints.limits.get("latency") if self.constraints else None
        if latency is None or limit is None or not self.config["latency_verify"] or self.best is None:
            return

        def choose() -> dict[str, int]:
            fitting = [c for c in self.history if c["satisfied"] and c["score"] is not None and self._fits(c["config"])]
            if not fitting:
                raise ConstraintError("no scored candidate fits the refitted latency model")
            best = fitting[0]
            for candidate in fitting[1:]:
                if self.is_better(candidate, best):
                    best = candidate
            self.best = {**best, "is_best": True, "constraints": {**best["constraints"], "latency": latency.latency(best["config"])}}
            self.select(best["config"])
            return dict(best["config"])

        self._latency_check = meet_latency_limit(latency, limit, dict(self.best["config"]), choose,
                                                 self.config["latency_verify"], self.log_level)

    def _latency_model(self) -> LatencyModel | None:
        return self.profiler.latency_model if isinstance(self.profiler, SubnetProfiler) else None

    def results(self) -> dict[str, Any]:
        """Adds ``subnet`` (the selected config), ``calibration_batches`` (last recalibration) and, with a
        latency constraint, ``latency`` (predicted and measured milliseconds before/after, calibration)."""
        out = {
            **super().results(),
            "subnet": self.current_config(),
            "calibration_batches": getattr(self, "calibration_batches", 0),
        }
        latency = self._latency_model()
        if latency is not None:
            out["latency"] = {
                "before": latency.reference_ms, "after": latency.latency(), "unit": "ms",
                **(getattr(self, "_latency_report", None) or {}), "calibration": latency.calibration,
                "verification": getattr(self, "_latency_check", None),
            }
        return out

    def run_search(self) -> None:
        """The core's loop with training-time sampling bypassed; on error the model is put back."""
        start, stats = self._restore_point
        try:
            with _bypass(self.model):  # the searcher manages subnets and statistics itself
                super().run_search()
        except BaseException:
            # leave the model as the search found it: subnet and batch-norm statistics (the search
            # state up to the last finished iteration is in the checkpoint, if one is configured)
            self.select(start)
            buffers = dict(self.model.named_buffers())
            with torch.no_grad():
                for name, value in stats.items():
                    buffers[name].copy_(value)
            raise


class RandomSearcher(NASSearcher):
    """Scores uniformly random subnets that satisfy the constraints; keeps the best."""

    def propose(self) -> dict[str, int]:
        return self.random_config()

    def can_sample_ahead(self, pending: list[dict[str, Any]]) -> bool:
        """Always: draws never depend on scores (so ranks score ``world_size`` candidates at a time)."""
        return True


class EvolveSearcher(NASSearcher):
    """Evolutionary search: random subnets first, then children of the best ones (the ``autonas`` default).

    Every scored candidate joins the current generation. When it holds ``population_size`` candidates,
    the ``candidate_size`` best of the parents and this generation become the new parents. A child is,
    with probability ``crossover_prob``, a crossover of two parents (each hparam from either) and
    otherwise a copy of one parent; then each hparam is redrawn with probability ``mutation_prob``.
    """

    population: list[dict[str, Any]]
    parents: list[dict[str, Any]]

    @property
    def default_search_config(self) -> SearchConfig:
        return {
            **super().default_search_config,
            "population_size": 20,
            "candidate_size": 5,
            "mutation_prob": 0.1,
            "crossover_prob": 0.5,
        }

    @property
    def default_state_dict(self) -> dict[str, Any]:
        return {**super().default_state_dict, "population": [], "parents": []}

    @property
    def state_schema(self) -> dict[str, Any]:
        return {**super().state_schema, "population": list[_Member], "parents": list[_Member]}

    def sanitize_search_config(self, config: Mapping[str, Any] | None) -> SearchConfig:
        merged = super().sanitize_search_config(config)
        check_int(merged, "population_size", minimum=1)
        check_int(merged, "candidate_size", minimum=1)
        check_float(merged, "mutation_prob", minimum=0.0, maximum=1.0)
        check_float(merged, "crossover_prob", minimum=0.0, maximum=1.0)
        if merged["candidate_size"] > merged["population_size"]:
            raise ConfigError(
                f"search config candidate_size={merged['candidate_size']} exceeds population_size="
                f"{merged['population_size']}; the parents are chosen among a generation, so use "
                "candidate_size <= population_size"
            )
        return merged

    def before_step(self) -> None:
        if len(self.population) >= self.config["population_size"]:
            pool = self.parents + self.population  # stable sort: ties keep the earlier candidate
            self.parents = sorted(pool, key=lambda c: -c["score"])[: self.config["candidate_size"]]
            self.population = []

    def _mutate(self, config: dict[str, int]) -> dict[str, int]:
        prob = self.config["mutation_prob"]
        for name, choices in self.choices().items():
            if self.rng.random() < prob:
                config[name] = self.rng.choice(choices)
        return config

    def propose(self) -> dict[str, int]:
        if not self.parents:
            return self.random_config()

        def pick() -> dict[str, Any]:
            return self.parents[self.rng.randrange(len(self.parents))]

        if len(self.parents) > 1 and self.rng.random() < self.config["crossover_prob"]:
            a, b = pick()["config"], pick()["config"]
            child = {name: (a if self.rng.random() < 0.5 else b)[name] for name in self.choices()}
        else:
            child = dict(pick()["config"])
        return self._mutate(child)

    def after_step(self, candidate: dict[str, Any]) -> None:
        if candidate["satisfied"] and not candidate["cached"]:
            self.population.append({"config": dict(candidate["config"]), "score": candidate["score"]})

    def can_sample_ahead(self, pending: list[dict[str, Any]]) -> bool:
        """Until the generation is full: only choosing the next parents needs the scores."""
        joining = sum(1 for c in pending if c["satisfied"] and not c["cached"])
        return len(self.population) + joining < self.config["population_size"]
