"""Supernet training semantics: a new subnet per training forward, a fixed subnet in eval.

A forward pre-hook on the converted model (no patched ``train``/``forward``) does the work, so an
ordinary training loop trains the supernet unchanged:

* root module in ``train()`` mode: every forward first activates a new subnet, drawn by a seeded
  generator according to the schedule (``"random"``: uniformly random; ``"sandwich"``: max, min, random
  in rotation, one per forward);
* root module in ``eval()`` mode: the subnet the user selected (``select``/``sample``; max after
  ``convert``) is active. If the previous forward auto-sampled, the user's selection is put back first.

The hook also tracks which subnet the batch-norm running statistics belong to. Training forwards on
random subnets mix them. The sampler keeps a copy of the inputs of the first ``calibration_batches``
training forwards (mode config key, default 8; 0 keeps none): an eval forward of a subnet whose
statistics belong to another subnet (or to the training mix) first re-estimates them from those
batches, as :func:`modeopt_autonas.recalibrate_bn` would, so evaluating the max subnet after
supernet training gives its real accuracy. With too few kept batches (fewer than 8) the forward warns
once instead (:class:`StaleBatchNormWarning`), never evaluating silently with wrong statistics.
Searchers use the kept batches as calibration data when given none.
"""

from __future__ import annotations

import os
import random
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_core import ConfigError, unwrap_model
from modeopt_core.sdk import DEFAULT_MIN_CALIBRATION_BATCHES

from .space import SearchSpace, SpaceExportedError

__all__ = [
    "SAMPLING_SCHEDULES",
    "StaleBatchNormWarning",
    "install_supernet_sampling",
    "pause_sampling",
    "supernet_sampler",
    "uninstall_supernet_sampling",
]

SAMPLING_SCHEDULES = ("random", "sandwich")
DEFAULT_KEPT_BATCHES = 8
"""Training inputs the sampler keeps as calibration data (see the module doc)."""
_SANDWICH = ("max", "min", "random")
_ATTR = "_modeopt_supernet_sampler"


class StaleBatchNormWarning(UserWarning):
    """An eval forward runs a subnet whose batch-norm statistics were estimated for other subnets."""


def _has_tracked_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


class _SupernetSampler:
    """Per-model sampling state and the space's :class:`~modeopt_autonas.space.SubnetDriver` (kept in the
    model's ``__dict__``, so ``deepcopy`` copies it along)."""

    def __init__(self, model: nn.Module, space: SearchSpace, schedule: str, seed: int,
                 calibration_batches: int = DEFAULT_KEPT_BATCHES) -> None:
        self.model = model
        self.calibration_batches = calibration_batches
        #: copies of the first training inputs (args, kwargs), the calibration data of eval forwards
        self.kept: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.space = space
        self.schedule = schedule
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = 0  # training forwards that sampled a subnet
        self.selection: dict[str, int] = space.config()  # the user's selection
        self.sampled: dict[str, int] | None = None  # set while an auto-sampled subnet is active
        self.has_bn = _has_tracked_batchnorm(space.model)
        # the subnet the batch-norm statistics belong to (None: a mix of subnets)
        self.calibrated_for: dict[str, int] | None = space.config()
        self.warned_for: dict[str, int] | None = None
        self.sampling_paused = 0  # > 0: training forwards keep the selected subnet
        self.bypass = 0  # > 0: the hook does nothing (the caller manages subnets and statistics)

    # ---- user-facing state changes ----------------------------------------------------------------
    def settle(self) -> dict[str, int]:
        """Put the user's selection back if a training forward auto-sampled; return the selection."""
        if self.sampled is not None:
            current = self.space.config()
            if current == self.sampled:
                self.space.select(self.selection)
            else:  # changed by hand (e.g. SearchSpace.select) after the last sampled forward: keep it
                self.selection = current
            self.sampled = None
        else:
            self.selection = self.space.config()
        return dict(self.selection)

    def note_selection(self) -> None:
        """The user selected the active subnet (through ``select``/``sample``)."""
        self.sampled = None
        self.selection = self.space.config()

    def note_calibrated(self) -> None:
        """The batch-norm statistics were just re-estimated for the active subnet."""
        self.calibrated_for = self.space.config()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside the block the hook does nothing: the caller manages subnets and statistics (searchers)."""
        self.settle()
        self.bypass += 1
        try:
            yield
        finally:
            self.bypass -= 1

    def detach(self) -> None:
        """Remove the sampling hook from the model; the user's selection (not a sampled subnet) stays."""
        self.model.__dict__.pop(_ATTR, None)
        with suppress(SpaceExportedError):  # exported already: nothing left to settle
            self.settle()
        hooks = self.model._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is _pre_forward]:
            del hooks[key]
            self.model._forward_pre_hooks_with_kwargs.pop(key, None)

    # ---- forward hook -----------------------------------------------------------------------------
    def _draw(self) -> dict[str, int]:
        mode = _SANDWICH[self.steps % 3] if self.schedule == "sandwich" else "random"
        return self.space.sample(mode, rng=self.rng)

    def kept_forward_loop(self) -> Any:
        """A forward loop over the kept training inputs (None when fewer than the minimum are kept)."""
        if len(self.kept) < DEFAULT_MIN_CALIBRATION_BATCHES:
            return None
        kept = list(self.kept)

        def loop(model: nn.Module) -> None:
            for args, kwargs in kept:
                model(*args, **kwargs)

        return loop

    def _keep(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        if len(self.kept) < self.calibration_batches:
            self.kept.append((_copy_input(args), dict(_copy_input(dict(kwargs)))))

    def _recalibrate_from_kept(self) -> bool:
        """Re-estimate the statistics of the active subnet from the kept batches; False when too few."""
        loop = self.kept_forward_loop()
        if loop is None:
            return False
        from modeopt_core import recalibrate_batchnorm

        self.bypass += 1
        try:
            recalibrate_batchnorm(self.model, loop, min_batches=DEFAULT_MIN_CALIBRATION_BATCHES, strict=True)
        finally:
            self.bypass -= 1
        self.calibrated_for = self.space.config()
        return True

    def before_forward(self, training: bool, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
                       ) -> None:
        if self.bypass:
            return
        if training and not self.sampling_paused:
            self._keep(args, kwargs or {})
            if self.sampled is None or self.space.config() != self.sampled:
                self.selection = self.space.config()
            self.sampled = self._draw()
            self.steps += 1
            if self.has_bn:
                self.calibrated_for = None
                self.warned_for = None  # the statistics changed: warn again at the next eval
            return
        self.settle()
        if not self.has_bn:
            return
        current = self.space.config()
        if training:  # fine-tuning the selected subnet: its statistics follow it
            self.calibrated_for = current
        elif self.calibrated_for != current and self._recalibrate_from_kept():
            return
        elif self.calibrated_for != current and self.warned_for != current:
            self.warned_for = current
            why = (
                "a mix of the subnets sampled during supernet training"
                if self.calibrated_for is None
                else "another subnet"
            )
            warnings.warn(
                f"evaluating a subnet whose batch-norm running statistics belong to {why}; its outputs "
                "are inaccurate until modeopt_autonas.recalibrate_bn(model, data_loader) re-estimates them",
                StaleBatchNormWarning,
                stacklevel=_caller_stacklevel(),
            )


_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (torch, sys.modules[__name__.partition(".")[0]]) if m.__file__
)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside torch and this package (the user's forward call)."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _copy_input(value: Any) -> Any:
    """A detached copy of the tensors in a forward's arguments (containers rebuilt, other values shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy_input(v) for v in value) if type(value) in (tuple, list) else value
    if isinstance(value, dict):
        return {k: _copy_input(v) for k, v in value.items()}
    return value


def _pre_forward(module: nn.Module, args: Any, kwargs: Any) -> None:
    sampler = module.__dict__.get(_ATTR)
    if sampler is not None:
        sampler.before_forward(module.training, args, kwargs)


def supernet_sampler(model: nn.Module) -> _SupernetSampler | None:
    """The sampling state installed on ``model`` or on the module a DP/DDP wrapper holds (None when none)."""
    return unwrap_model(model).__dict__.get(_ATTR)


def install_supernet_sampling(model: nn.Module, space: SearchSpace, schedule: str = "random", seed: int = 0,
                              calibration_batches: int = DEFAULT_KEPT_BATCHES) -> None:
    """Make ``model`` sample a subnet per training forward (see the module doc); replaces an earlier install.

    Args:
        schedule: ``"random"`` or ``"sandwich"`` (max, min, random in rotation).
        seed: seed of the sampling generator (same seed and forwards -> same subnets).
        calibration_batches: inputs of the first training forwards kept (copied) as calibration data
            for eval forwards and searches (0: none; eval forwards on stale statistics then warn).
    """
    if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 0:
        raise ConfigError(f"calibration_batches must be an int >= 0, got {calibration_batches!r}")
    if schedule not in SAMPLING_SCHEDULES:
        raise ConfigError(f"unknown sampling schedule {schedule!r}; use one of {list(SAMPLING_SCHEDULES)}")
    if space.model is not model:
        raise ConfigError("install_supernet_sampling needs the search space of this very model")
    uninstall_supernet_sampling(model)
    sampler = _SupernetSampler(model, space, schedule, seed, calibration_batches)
    model.__dict__[_ATTR] = sampler
    space.attach_driver(sampler)
    # A module-level function (not a closure): deepcopy and checkpoint shadows keep a working hook.
    model.register_forward_pre_hook(_pre_forward, with_kwargs=True)


def uninstall_supernet_sampling(model: nn.Module) -> None:
    """Remove the sampling hook; the user's selection (not an auto-sampled subnet) stays active."""
    sampler = model.__dict__.get(_ATTR)
    if sampler is None:
        return
    if sampler.space.driver is sampler:
        sampler.space.detach_driver()
    else:
        sampler.detach()


@contextmanager
def pause_sampling(model: nn.Module) -> Iterator[None]:
    """Inside the block, training forwards train the selected subnet (e.g. to fine-tune it before export)."""
    sampler = supernet_sampler(model)
    if sampler is None:
        yield
        return
    sampler.settle()
    sampler.sampling_paused += 1
    try:
        yield
    finally:
        sampler.sampling_paused -= 1


@contextmanager
def _bypass(model: nn.Module) -> Iterator[_SupernetSampler | None]:
    """Inside the block the hook does nothing: the caller manages subnets and statistics (searchers)."""
    sampler = supernet_sampler(model)
    if sampler is None:
        yield None
        return
    with sampler.paused():
        yield sampler
