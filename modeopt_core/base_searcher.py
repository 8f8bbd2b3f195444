"""``BaseSearcher``: config handling, lifecycle, scoring and resumable checkpoints.

Lifecycle of :meth:`BaseSearcher.search` (the only entry point; subclasses override the hooks)::

    sanitize_search_config -> reset_search -> build forward loop and profiler
    -> load_search_checkpoint (resume) -> before_search -> run_search -> after_search -> results

Checkpoints (``config["checkpoint"]``) are safetensors + JSON files written atomically by
:mod:`modeopt_core.statefile`; no pickle. A checkpoint records a *fingerprint* of the search: the
searcher class, the JSON-able part of the config (functions and data loaders cannot be compared and
are left out), the constraints and the shapes of the dummy input. Resuming with a different
fingerprint raises :class:`~modeopt_core.errors.CheckpointError` listing the differences; to start
afresh, delete the file or pass another path. Keys in ``resume_compatible_keys`` (``checkpoint``,
``verbose``, ``shard_evaluations``, and for iterative searchers ``num_iters``) may change between
runs, so a finished search can be extended by raising ``num_iters``.

Under ``torch.distributed`` (see ``docs/distributed.md``) every rank calls :meth:`BaseSearcher.search`
with the same arguments (checked: ranks that disagree raise
:class:`~modeopt_core.distributed.DistributedError`); rank 0's seed is used on every rank; only rank 0
logs and writes the checkpoint; a checkpoint is read by rank 0 and sent to the others (the world size
may differ from the run that wrote it); and at the end every rank receives rank 0's buffers (batch-norm
statistics), so all ranks return the same model. Subclasses that evaluate candidates in parallel
consult ``config["shard_evaluations"]``.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, final

from torch import nn

from . import distributed
from ._args import require_module
from ._search_state import check_state_schema, decode_rng_state, encode_rng_state
from .calibration import ForwardLoop, make_forward_loop
from .constraints import Constraints, ForwardProfiler, ModelProfiler
from .errors import CheckpointError, ConfigError, ConstraintError, ModeoptError, SearchError
from .search_config import (
    check_bool,
    check_callable,
    check_int,
    check_known_keys,
    check_path,
    describe_value,
    fingerprint_diff,
    json_part,
)
from .state import unwrap_model
from .statefile import read_state_file, write_state_file

__all__ = ["SEARCH_CHECKPOINT_KIND", "BaseSearcher", "SearchConfig"]

SearchConfig = dict[str, Any]

SEARCH_CHECKPOINT_KIND = "modeopt-search-checkpoint"
"""The ``kind`` of search checkpoint state files."""

_RNG_KEY = "rng_state"
_PER_RANK_KEYS = frozenset({"checkpoint", "verbose"})  # config keys that may differ between ranks (rank 0's count)

logger = logging.getLogger(__name__)


class BaseSearcher(ABC):
    """Base of all search algorithms. Construct without arguments, then call :meth:`search`.

    Subclasses override :attr:`default_search_config` and :attr:`default_state_dict` (extending the
    parent's with ``{**super().default_..., ...}``), :meth:`run_search`, and optionally the other
    hooks. Attributes available to hooks during a search: ``model``, ``config`` (sanitised),
    ``constraints`` (:class:`Constraints`, resolved to absolute limits by :meth:`before_search`),
    ``dummy_input``, ``forward_loop`` (or None), ``profiler`` (or None) and ``rng`` (a
    ``random.Random`` seeded with ``config["seed"]`` whose state is checkpointed: draw all randomness
    from it so resumed searches are exact).
    """

    resume_compatible_keys: ClassVar[frozenset[str]] = frozenset({"checkpoint", "verbose", "shard_evaluations"})
    """Config keys that may differ between the run that wrote a checkpoint and the one resuming it."""

    def __init__(self) -> None:
        self.model: nn.Module = nn.Module()
        self.config: SearchConfig = {}
        self.constraints: Constraints = Constraints()
        self.dummy_input: Any = None
        self.forward_loop: ForwardLoop | None = None
        self.profiler: ModelProfiler | None = None
        self.rng = random.Random(0)
        self.resumed = False
        """True when the current search resumed from a checkpoint."""

    # ----------------------------------------------------------------- configuration
    @property
    def default_search_config(self) -> SearchConfig:
        """Every accepted config key with its default."""
        return {
            "score_func": None,  # model -> float, higher is better
            "data_loader": None,  # iterable of batches for calibration
            "forward_loop": None,  # model -> Any; alternative to data_loader
            "collect_func": None,  # batch -> model input; default: first item of a tuple/list batch
            "max_iter_data_loader": None,  # max batches per forward loop over data_loader (None: all)
            "checkpoint": None,  # path of the resumable search checkpoint
            "verbose": True,  # progress bar and info logs; False: no output at all
            "seed": 0,  # seed of self.rng (rank 0's under torch.distributed)
            # under torch.distributed: ranks score different candidates in parallel (True), or every
            # rank scores every candidate and rank 0's score counts (False: for a score_func that
            # runs collectives itself, e.g. a DistributedSampler plus all_reduce)
            "shard_evaluations": True,
        }

    @property
    def default_state_dict(self) -> dict[str, Any]:
        """Attribute name -> initial value of the checkpointed search state (values: JSON/tensor data)."""
        return {}

    @property
    def state_schema(self) -> dict[str, Any]:
        """Attribute name -> type (a pydantic-checkable annotation) of the checkpointed state.

        A resumed state is validated against it (strictly) before anything is assigned; subclasses
        extend it with ``{**super().state_schema, ...}`` for every attribute they add.
        """
        return {}

    def validate_state(self, state: Mapping[str, Any]) -> None:
        """Checks of a loaded state beyond its schema (e.g. that configs name this space's choices).

        Called by :meth:`load_state_dict` after the schema check and before anything is assigned;
        raise :class:`~modeopt_core.errors.CheckpointError` (see ``_search_state.state_error``).
        """

    def sanitize_search_config(self, config: Mapping[str, Any] | None) -> SearchConfig:
        """Merge ``config`` into the defaults and validate it; raise ConfigError on any bad key or value."""
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise ConfigError(f"search config must be a dict, got {type(config).__name__}")
        defaults = self.default_search_config
        check_known_keys(config, defaults, type(self).__name__)
        merged = {**defaults, **config}
        check_callable(merged, "score_func", "score_func(model) -> float (higher is better)")
        check_callable(merged, "forward_loop", "forward_loop(model) that runs data through the model")
        check_callable(merged, "collect_func", "collect_func(batch) -> model input")
        check_int(merged, "max_iter_data_loader", minimum=1, allow_none=True)
        check_path(merged, "checkpoint")
        check_bool(merged, "verbose")
        check_bool(merged, "shard_evaluations")
        check_int(merged, "seed")
        if merged["data_loader"] is not None and merged["forward_loop"] is not None:
            raise ConfigError(
                "search config has both data_loader and forward_loop; they are mutually exclusive: pass one"
            )
        if merged["data_loader"] is not None and not hasattr(merged["data_loader"], "__iter__"):
            raise ConfigError(
                f"search config data_loader={merged['data_loader']!r} is not iterable; pass an iterable of "
                "batches (e.g. a torch DataLoader)"
            )
        if merged["collect_func"] is not None and merged["data_loader"] is None:
            raise ConfigError("search config collect_func only applies to data_loader, which is not given")
        return merged

    # ----------------------------------------------------------------- hooks
    def make_profiler(self) -> ModelProfiler | None:
        """Profiler counting the current model's flops/params; default: run it on ``dummy_input``."""
        return ForwardProfiler(self.model, self.dummy_input) if self.dummy_input is not None else None

    def before_search(self) -> None:
        """Prepare the search; the base resolves percentage constraints on the model as it is now."""
        if self.constraints and not self.constraints.is_resolved:
            assert self.profiler is not None  # guaranteed by search()
            self.constraints = self.constraints.resolve(self.profiler)

    @abstractmethod
    def run_search(self) -> None:
        """Run the search proper."""

    def after_search(self) -> None:
        """Finish the search (e.g. put the model into its best found state)."""

    def results(self) -> dict[str, Any]:
        """The dict returned by :meth:`search`; subclasses extend it."""
        return {
            "searcher": type(self).__name__,
            "resumed": self.resumed,
            "constraints": {
                "spec": self.constraints.to_dict(),
                "limits": self.constraints.limits if self.constraints.is_resolved else None,
                "reference": dict(self.constraints.reference),
            },
        }

    # ----------------------------------------------------------------- state
    def reset_search(self) -> None:
        """Set every state attribute to (a copy of) its default and re-seed :attr:`rng`."""
        for name, value in self.default_state_dict.items():
            setattr(self, name, copy.deepcopy(value))
        self.rng = random.Random(self.config.get("seed", 0))
        self.resumed = False

    def state_dict(self) -> dict[str, Any]:
        """The checkpointed state: each ``default_state_dict`` attribute plus the RNG state."""
        state = {name: copy.deepcopy(getattr(self, name)) for name in self.default_state_dict}
        state[_RNG_KEY] = encode_rng_state(self.rng)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; raise CheckpointError when keys do not match."""
        expected = {*self.default_state_dict, _RNG_KEY}
        if set(state) != expected:
            raise CheckpointError(
                f"search checkpoint state does not fit {type(self).__name__}: missing "
                f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
            )
        rng_state = decode_rng_state(state[_RNG_KEY])
        check_state_schema(self.state_schema, state)
        self.validate_state(state)
        try:
            self.rng.setstate(rng_state)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"search checkpoint holds an invalid random-generator state: {exc}") from exc
        for name in self.default_state_dict:
            setattr(self, name, copy.deepcopy(state[name]))

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (JSON data; see module doc)."""
        cls = type(self)
        return {
            "searcher": f"{cls.__module__}.{cls.__qualname__}",
            "config": json_part(self.config, exclude=self.resume_compatible_keys),
            "constraints": self.constraints.to_dict(),
            "dummy_input": describe_value(self.dummy_input),
        }

    @property
    def log_level(self) -> int:
        """Level of the searcher's progress logs: INFO when ``verbose`` (on rank 0), else DEBUG (hidden by default)."""
        return logging.INFO if self.config.get("verbose", True) and distributed.is_main() else logging.DEBUG

    @property
    def checkpoint_path(self) -> Path | None:
        """``config["checkpoint"]`` as a Path (None: no checkpointing)."""
        path = self.config.get("checkpoint")
        return Path(os.fspath(path)) if path is not None else None

    def save_search_checkpoint(self) -> None:
        """Write the state and fingerprint to the checkpoint file atomically (no-op without a path).

        Only rank 0 writes (the others hold the same state); no barrier: the other ranks never read
        the file during the search, and a resumed search gets the state from rank 0.
        """
        path = self.checkpoint_path
        if path is None or not distributed.is_main():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_state_file(
            path,
            {"fingerprint": self.fingerprint(), "state": self.state_dict()},
            kind=SEARCH_CHECKPOINT_KIND,
        )

    def load_search_checkpoint(self) -> bool:
        """Resume from the checkpoint file if it exists; return whether state was loaded.

        Under ``torch.distributed`` rank 0 reads the file and sends its content to the other ranks.
        """
        path = self.checkpoint_path
        data = distributed.run_on_main(lambda: self._read_search_checkpoint(path))
        if data is None:
            if path is not None:
                logger.log(self.log_level, "no search checkpoint at %s yet: starting a fresh search", path)
            return False
        if not isinstance(data, Mapping) or set(data) != {"fingerprint", "state"}:
            raise CheckpointError(f"{path} is not a modeopt search checkpoint (unexpected layout)")
        saved, current = data["fingerprint"], self.fingerprint()
        if saved != current:
            diffs = fingerprint_diff(saved, current) if isinstance(saved, Mapping) else ["<unreadable>"]
            raise CheckpointError(
                f"search checkpoint {path} was written by a different search ({'; '.join(diffs)}); resume "
                "with the same config, constraints and dummy input, or delete the file (or pass another "
                "checkpoint path) to start afresh"
            )
        if not isinstance(data["state"], Mapping):
            raise CheckpointError(f"{path} is not a modeopt search checkpoint (its state is not a dict)")
        try:
            self.load_state_dict(data["state"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self.resumed = True
        logger.log(self.log_level, "resumed search from checkpoint %s", path)
        return True

    @staticmethod
    def _read_search_checkpoint(path: Path | None) -> dict[str, Any] | None:
        if path is None or not path.exists():
            return None
        return read_state_file(path, kind=SEARCH_CHECKPOINT_KIND)

    def _check_same_search_on_all_ranks(self) -> None:
        """Raise on every rank when the ranks' searches differ (they would diverge or wait forever)."""
        mine = {**self.fingerprint(), "config": json_part(self.config, exclude=_PER_RANK_KEYS)}
        fingerprints = distributed.all_gather_objects(mine)
        for other, fingerprint in enumerate(fingerprints):
            if fingerprint != fingerprints[0]:
                diffs = fingerprint_diff(fingerprints[0], fingerprint)
                raise distributed.DistributedError(
                    f"rank {other} runs a different search than rank 0 ({'; '.join(diffs)}); call search with "
                    "the same model, config, constraints and dummy-input shapes on every rank"
                )

    # ----------------------------------------------------------------- scoring
    def eval_score(self) -> float:
        """``score_func(model)`` as a float (higher is better); the model's mode is left to score_func."""
        score_func = self.config.get("score_func")
        if score_func is None:
            raise ConfigError(f"{type(self).__name__} needs config['score_func'] = a function model -> float")
        score = score_func(self.model)
        if hasattr(score, "item"):
            score = score.item()
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise SearchError(f"score_func returned {score!r}; it must return a finite number")
        return float(score)

    def _profile_dummy_input(self) -> ModelProfiler | None:
        """:meth:`make_profiler`, with a forward pass that fails on ``dummy_input`` reported as such."""
        try:
            return self.make_profiler()
        except ModeoptError:
            raise
        except Exception as exc:
            raise SearchError(
                f"running the model on dummy_input ({str(describe_value(self.dummy_input))[:120]}) failed: "
                f"{type(exc).__name__}: {str(exc)[:500]}. Pass a dummy_input the model accepts: one input batch "
                "of the right shape (e.g. torch.zeros(1, 3, 224, 224) for an ImageNet model)"
            ) from exc

    # ----------------------------------------------------------------- entry point
    @final
    def search(
        self,
        model: nn.Module,
        constraints: Mapping[str, Any] | Constraints | None,
        dummy_input: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the whole search lifecycle on ``model`` and return :meth:`results`.

        Every module's training flag is restored afterwards, also on error. Config and constraint
        errors are raised before the model is touched. A DP/DDP wrapper is unwrapped: the search
        runs on (and changes) the wrapped module.
        """
        model = unwrap_model(require_module(model, "search"))
        parsed = Constraints.parse(constraints)
        self.config = self.sanitize_search_config(config)
        if distributed.is_distributed():  # every rank draws the same candidates
            self.config["seed"] = distributed.broadcast_object(self.config["seed"])
        self.model, self.constraints, self.dummy_input = model, parsed, dummy_input
        self.reset_search()
        if self.config["forward_loop"] is not None:
            self.forward_loop = self.config["forward_loop"]
        elif self.config["data_loader"] is not None:
            self.forward_loop = make_forward_loop(
                self.config["data_loader"],
                collect_func=self.config["collect_func"],
                max_batches=self.config["max_iter_data_loader"],
            )
        else:
            self.forward_loop = None
        self.profiler = self._profile_dummy_input()
        if self.constraints and self.profiler is None:
            raise ConstraintError(
                f"constraints {self.constraints.to_dict()} need a dummy_input to count flops/params; pass one"
            )
        if distributed.is_distributed():
            self._check_same_search_on_all_ranks()
        flags = {m: m.training for m in model.modules()}
        try:
            self.load_search_checkpoint()
            self.before_search()
            self.run_search()
            self.after_search()
            distributed.broadcast_buffers(model)  # identical statistics on every rank, whatever its data
            return self.results()
        finally:
            for module, flag in flags.items():
                module.training = flag
