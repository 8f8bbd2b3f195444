"""``IterativeSearcher``: sample a candidate, check constraints, score it, keep the best; repeat.

A subclass implements three small methods and knows the model's search space; this base does not:

* :meth:`~IterativeSearcher.sample`: draw a candidate config with ``self.rng``, select it on the
  model and return it (a JSON-able dict, e.g. ``{"layer1.out_channels": 32}``);
* :meth:`~IterativeSearcher.select`: put the model into the state a config describes;
* :meth:`~IterativeSearcher.current_config`: the config the model is in now.

Optional hooks: ``before_step``, ``after_step(candidate)``, ``early_stop()``,
``is_better(candidate, best)`` and ``evaluate_constraints()``.

Each candidate is recorded in ``history`` as a dict::

    {"iteration": int, "config": dict, "satisfied": bool, "constraints": {name: value},
     "score": float | None (None when not satisfied: unsatisfied candidates are never scored),
     "cached": bool (an identical config was evaluated before and its result reused),
     "is_best": bool}

Only satisfied candidates can become ``best``; when none is satisfied the results say so
(``best`` None, ``satisfied`` False) and the model is put back into its starting config.

Under ``torch.distributed`` the search runs in *rounds*: all ranks draw the same candidates (same
seed) until ``world_size`` of them need a score or :meth:`~IterativeSearcher.can_sample_ahead` says
the next draw depends on pending scores; each rank scores one of them (``shard_evaluations``), the
scores are all-gathered, and every rank records the round's candidates in order. Candidates,
history, best and checkpoints are exactly those of a single-process search, whatever the world size.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from . import distributed
from ._search_state import CandidateRecord, NonNegativeInt, SubnetConfig, state_error
from .base_searcher import BaseSearcher, SearchConfig
from .constraints import ConstraintResult
from .errors import ConfigError
from .progress import progress
from .search_config import candidate_key, check_int

__all__ = ["IterativeSearcher"]

logger = logging.getLogger(__name__)


class IterativeSearcher(BaseSearcher):
    """Iterates ``before_step -> run_step (sample, evaluate) -> after_step -> early_stop``.

    The search state (iteration number, history, best, early-stop flag, RNG) is checkpointed at the end
    of an iteration once ``checkpoint_interval_s`` seconds have passed since the last write and writing
    would keep under ``checkpoint_max_overhead`` of the time (the file grows with the history), and
    always when the search ends. A killed search resumed from its checkpoint replays the few iterations
    since the last write with the same random draws, so it ends exactly as an uninterrupted one.

    Progress goes through :func:`modeopt_core.progress.progress` (a bar on a terminal, log lines
    elsewhere) with the best score and its constraint values; ``verbose=False`` shows nothing.
    """

    resume_compatible_keys: ClassVar[frozenset[str]] = BaseSearcher.resume_compatible_keys | {"num_iters"}
    requires_score_func: ClassVar[bool] = True
    """Whether ``config["score_func"]`` is mandatory (subclasses with their own scoring set False)."""
    checkpoint_interval_s: ClassVar[float] = 1.0
    """Minimum seconds between two checkpoint writes inside the loop (0: whenever the overhead allows)."""
    checkpoint_max_overhead: ClassVar[float | None] = 0.1
    """Upper bound on the fraction of search time spent writing checkpoints (None: no bound)."""

    # These are assigned by reset_search() from default_state_dict.
    iter_num: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    stopped_early: bool
    original_config: dict[str, Any] | None

    def __init__(self) -> None:
        super().__init__()
        self._evaluated: dict[str, dict[str, Any]] = {}  # candidate key -> first evaluated record
        self._next_save = 0.0  # time.monotonic() after which the loop may write a checkpoint

    @property
    def default_search_config(self) -> SearchConfig:
        """Adds ``num_iters`` (iteration limit) and a default of 50 calibration batches."""
        return {**super().default_search_config, "num_iters": 5000, "max_iter_data_loader": 50}

    @property
    def default_state_dict(self) -> dict[str, Any]:
        """Adds ``iter_num``, ``history``, ``best``, ``stopped_early`` and ``original_config``."""
        return {
            **super().default_state_dict,
            "iter_num": 0,
            "history": [],
            "best": None,
            "stopped_early": False,
            "original_config": None,
        }

    @property
    def state_schema(self) -> dict[str, Any]:
        """Adds the types of ``iter_num``, ``history``, ``best``, ``stopped_early`` and ``original_config``."""
        return {
            **super().state_schema,
            "iter_num": NonNegativeInt,
            "history": list[CandidateRecord],
            "best": CandidateRecord | None,
            "stopped_early": bool,
            "original_config": SubnetConfig | None,
        }

    def validate_state(self, state: Mapping[str, Any]) -> None:
        """Also: one history record per iteration, and a score for every satisfied record."""
        super().validate_state(state)
        if len(state["history"]) != state["iter_num"]:
            raise state_error("iter_num", f"{state['iter_num']} iterations but {len(state['history'])} history records")
        for i, record in enumerate([*state["history"], *([state["best"]] if state["best"] is not None else [])]):
            if record["satisfied"] and record["score"] is None:
                raise state_error(f"history[{i}]" if i < len(state["history"]) else "best",
                                  "a satisfied candidate without a score")
        if state["best"] is not None and not state["best"]["satisfied"]:
            raise state_error("best", "the best candidate does not satisfy the constraints")

    def sanitize_search_config(self, config: Mapping[str, Any] | None) -> SearchConfig:
        """Also checks ``num_iters`` and that a ``score_func`` is given when required."""
        merged = super().sanitize_search_config(config)
        check_int(merged, "num_iters", minimum=1)
        if self.requires_score_func and merged["score_func"] is None:
            raise ConfigError(
                f"{type(self).__name__} needs config['score_func']: a function model -> float, higher is "
                "better (e.g. validation accuracy)"
            )
        return merged

    # ----------------------------------------------------------------- subclass interface
    @abstractmethod
    def sample(self) -> dict[str, Any]:
        """Draw the next candidate (use ``self.rng``), select it on the model and return its config."""

    @abstractmethod
    def select(self, config: Mapping[str, Any]) -> None:
        """Put the model into the state described by ``config``."""

    @abstractmethod
    def current_config(self) -> dict[str, Any]:
        """The config of the model's current state (JSON-able)."""

    def before_step(self) -> None:
        """Runs before each :meth:`sample`."""

    def after_step(self, candidate: dict[str, Any]) -> None:
        """Runs after each evaluated candidate (the record also appended to ``history``)."""

    def early_stop(self) -> bool:
        """Return True to end the search after the current iteration."""
        return False

    def can_sample_ahead(self, pending: list[dict[str, Any]]) -> bool:
        """Whether the next candidate may be drawn before the ``pending`` ones are scored.

        Only consulted under ``torch.distributed``, where candidates drawn ahead are scored in parallel.
        ``pending`` are the candidates drawn since the last scores arrived: scores not yet known,
        :meth:`after_step` not yet run for them. Return True only when :meth:`before_step` and
        :meth:`sample` would then behave exactly as after those steps (e.g. sampling that ignores
        scores). The default False scores one candidate at a time, as a single process does.
        """
        return False

    def is_better(self, candidate: dict[str, Any], best: dict[str, Any]) -> bool:
        """Whether a satisfied ``candidate`` replaces the current ``best``: strictly higher score."""
        return candidate["score"] > best["score"]

    def was_evaluated(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` was already evaluated in this search (its result would be reused)."""
        return candidate_key(config) in self._evaluated

    def forget_evaluations(self) -> None:
        """Empty the cache of evaluated candidates (e.g. after changing what a score means)."""
        self._evaluated = {}

    def evaluate_constraints(self) -> ConstraintResult:
        """Check the constraints on the model as currently selected."""
        if not self.constraints:
            return ConstraintResult(True, {}, {}, {})
        assert self.profiler is not None  # search() requires a profiler when constraints exist
        return self.constraints.check(self.profiler)

    # ----------------------------------------------------------------- lifecycle
    def reset_search(self) -> None:
        """Also clears the evaluation cache."""
        super().reset_search()
        self._evaluated = {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Also rebuilds the evaluation cache from the history."""
        super().load_state_dict(state)
        self._evaluated = {}
        for record in self.history:
            if not record["cached"]:
                self._evaluated.setdefault(candidate_key(record["config"]), record)

    def before_search(self) -> None:
        """Resolves constraints and remembers the starting config (restored if nothing is satisfied)."""
        super().before_search()
        if self.original_config is None:
            self.original_config = self.current_config()

    def run_step(self) -> dict[str, Any]:
        """Sample one candidate, evaluate it (or reuse a cached result), update ``best`` and ``history``."""
        candidate, previous = self._draw(self.iter_num)
        if previous is None and candidate["satisfied"]:
            candidate["score"] = self.eval_score()
        self._record(candidate)
        return candidate

    def _draw(self, iteration: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Sample a candidate and check its constraints; its score is left to the caller (None here).

        Returns the candidate record and the earlier record of the same config (None if new).
        """
        config = self.sample()
        key = candidate_key(config)
        previous = self._evaluated.get(key)
        if previous is not None:
            satisfied, values, score = previous["satisfied"], previous["constraints"], previous["score"]
        else:
            result = self.evaluate_constraints()
            satisfied, values, score = result.satisfied, dict(result.values), None
        candidate = {
            "iteration": iteration,
            "config": dict(config),
            "satisfied": satisfied,
            "constraints": values,
            "score": score,
            "cached": previous is not None,
            "is_best": False,
        }
        if previous is None:
            self._evaluated[key] = candidate
        return candidate, previous

    def _record(self, candidate: dict[str, Any]) -> None:
        if candidate["satisfied"] and (self.best is None or self.is_better(candidate, self.best)):
            candidate["is_best"] = True
            self.best = dict(candidate)
        self.history.append(candidate)

    def run_search(self) -> None:
        """Iterate until ``num_iters`` or :meth:`early_stop`, checkpointing along the way."""
        num_iters = self.config["num_iters"]
        verbose = self.config["verbose"]
        if self.iter_num >= num_iters or self.stopped_early:
            logger.log(self.log_level, "search already complete (resumed)")
            return
        bar = progress(total=num_iters, desc=type(self).__name__, enabled=verbose, unit="candidate")
        bar.initial = bar.n = self.iter_num  # resumed searches continue the count (and the rate ignores it)
        self._next_save = time.monotonic() + self.checkpoint_interval_s
        try:
            if distributed.is_distributed():
                while self.iter_num < num_iters and not self.stopped_early:
                    self._run_round(bar)
                    if not self.stopped_early and time.monotonic() >= self._next_save:
                        self._timed_checkpoint()
                if self.stopped_early:
                    logger.log(self.log_level, "early stop after %d iterations", self.iter_num)
            while self.iter_num < num_iters and not self.stopped_early:
                self.before_step()
                candidate = self.run_step()
                self.after_step(candidate)
                self.iter_num += 1
                self.stopped_early = bool(self.early_stop())
                bar.set_postfix_str(self._progress_text(), refresh=False)
                bar.update(1)
                if self.stopped_early:
                    logger.log(self.log_level, "early stop after %d iterations", self.iter_num)
                    break
                if time.monotonic() >= self._next_save:
                    self._timed_checkpoint()
        finally:
            bar.close()
        self.save_search_checkpoint()

    def _run_round(self, bar: Any) -> None:
        """Draw candidates until ``world_size`` need a score, score them across ranks, record them in order."""
        width = distributed.world_size()
        drawn: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        to_score: list[dict[str, Any]] = []
        while self.iter_num + len(drawn) < self.config["num_iters"] and len(to_score) < width:
            if drawn and not self.can_sample_ahead([c for c, _ in drawn]):
                break
            self.before_step()
            candidate, previous = self._draw(self.iter_num + len(drawn))
            drawn.append((candidate, previous))
            if previous is None and candidate["satisfied"]:
                to_score.append(candidate)
        if to_score:
            for candidate, score in zip(to_score, self._score_across_ranks([c["config"] for c in to_score])):
                candidate["score"] = score
            self.select(drawn[-1][0]["config"])  # each rank selected what it scored; agree again
        for index, (candidate, previous) in enumerate(drawn):
            if previous is not None:  # cached: its source may have been scored in this very round
                candidate["score"] = previous["score"]
            self._record(candidate)
            self.after_step(candidate)
            self.iter_num += 1
            self.stopped_early = bool(self.early_stop())
            bar.set_postfix_str(self._progress_text(), refresh=False)
            bar.update(1)
            if self.stopped_early:
                for dropped, earlier in drawn[index + 1 :]:  # drawn ahead but past the end of the search
                    if earlier is None:
                        self._evaluated.pop(candidate_key(dropped["config"]), None)
                return

    def _score_across_ranks(self, configs: list[dict[str, Any]]) -> list[float]:
        """Scores of ``configs``: shared out across ranks, or all scored everywhere and rank 0's taken."""
        width, me = distributed.world_size(), distributed.rank()
        shard = self.config["shard_evaluations"]

        def score_mine() -> dict[int, float]:
            scores = {}
            for i, config in enumerate(configs):
                if not shard or i % width == me:
                    self.select(config)
                    scores[i] = self.eval_score()
            return scores

        gathered = distributed.run_and_gather(score_mine)
        merged = gathered[0] if not shard else {i: s for part in gathered for i, s in part.items()}
        return [merged[i] for i in range(len(configs))]

    def _timed_checkpoint(self) -> None:
        start = time.monotonic()
        self.save_search_checkpoint()
        end = time.monotonic()
        wait = self.checkpoint_interval_s
        if self.checkpoint_max_overhead is not None:
            wait = max(wait, (end - start) / self.checkpoint_max_overhead)
        self._next_save = end + wait

    def after_search(self) -> None:
        """Selects the best candidate, or the starting config when no candidate was satisfied."""
        level = self.log_level
        if self.best is not None:
            self.select(self.best["config"])
            best = self.best
            logger.log(level, "best candidate: score %.6g, constraints %s", best["score"], best["constraints"])
        else:
            if self.original_config is not None:
                self.select(self.original_config)
            logger.log(level, "no candidate satisfied the constraints %s", self.constraints.to_dict())

    def results(self) -> dict[str, Any]:
        """Adds ``best``, ``satisfied``, ``iterations``, counts, ``stopped_early`` and ``history``."""
        return {
            **super().results(),
            "best": copy.deepcopy(self.best),
            "satisfied": self.best is not None,
            "iterations": self.iter_num,
            "num_evaluated": len(self._evaluated),
            "num_satisfied": sum(1 for r in self.history if r["satisfied"]),
            "stopped_early": self.stopped_early,
            "history": copy.deepcopy(self.history),
        }

    def _progress_text(self) -> str:
        shown = self.best if self.best is not None else (self.history[-1] if self.history else None)
        parts = [f"best={self.best['score']:.4g}" if self.best is not None else "best=none"]
        if shown is not None and self.constraints.is_resolved:
            limits = self.constraints.limits
            for name, value in shown["constraints"].items():
                parts.append(f"{name}={value:.3g}/{limits[name]:.3g}")
        return ", ".join(parts)
