"""Calibration helpers: forward loops built from data loaders, and batch-norm re-estimation.

A *forward loop* is a callable ``forward_loop(model)`` that runs calibration data through the model.
:func:`make_forward_loop` builds one from an iterable of batches and counts the batches it ran, so
callers can tell when there was too little data instead of silently skipping work.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .constraints import run_with_dummy_input
from .errors import ModeoptError

__all__ = [
    "DEFAULT_MIN_CALIBRATION_BATCHES",
    "CalibrationError",
    "DataLoaderForwardLoop",
    "ForwardLoop",
    "default_collect_func",
    "make_forward_loop",
    "recalibrate_batchnorm",
]

ForwardLoop = Callable[[nn.Module], Any]
"""``forward_loop(model)``: runs calibration data through ``model``."""

DEFAULT_MIN_CALIBRATION_BATCHES = 8
"""Batch-norm re-estimation from fewer batches than this warns (see :func:`recalibrate_batchnorm`)."""


class CalibrationError(ModeoptError, RuntimeError):
    """Calibration could not run (e.g. the forward loop fed no batch to the model)."""


def default_collect_func(batch: Any) -> Any:
    """Model input of a batch: the first item of a tuple/list batch (``(x, y)``), else the batch itself."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise CalibrationError("got an empty tuple/list batch; pass a collect_func that returns the input")
        return batch[0]
    return batch


class DataLoaderForwardLoop:
    """A forward loop over ``data_loader`` (see :func:`make_forward_loop`); counts the batches it ran.

    ``collect_func(batch)`` returns the model input, fed with the dummy-input convention: a non-tuple
    is the single positional argument, a tuple holds positional arguments, and a tuple ending with a
    dict passes that dict as keyword arguments. It is the place to move batches to the model's device.
    """

    def __init__(
        self,
        data_loader: Iterable[Any],
        *,
        collect_func: Callable[[Any], Any] | None = None,
        max_batches: int | None = None,
    ) -> None:
        if not isinstance(data_loader, Iterable):
            raise CalibrationError(f"data_loader must be iterable, got {type(data_loader).__name__}")
        if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
            raise CalibrationError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
        self.data_loader = data_loader
        self.collect_func = collect_func or default_collect_func
        self.max_batches = max_batches
        self.last_num_batches = 0
        """Batches fed to the model by the most recent call."""
        self.total_num_batches = 0
        """Batches fed to the model over all calls."""

    def __call__(self, model: nn.Module) -> int:
        """Feed up to ``max_batches`` batches to ``model`` under ``torch.no_grad``; return the count."""
        self.last_num_batches = 0
        with torch.no_grad():
            for batch in itertools.islice(self.data_loader, self.max_batches):
                run_with_dummy_input(model, self.collect_func(batch))
                self.last_num_batches += 1
                self.total_num_batches += 1
        return self.last_num_batches


def make_forward_loop(
    data_loader: Iterable[Any],
    *,
    collect_func: Callable[[Any], Any] | None = None,
    max_batches: int | None = None,
) -> DataLoaderForwardLoop:
    """Build a counting forward loop from a data loader (any iterable of batches).

    Args:
        collect_func: maps a batch to the model input; default :func:`default_collect_func`.
        max_batches: stop after this many batches (None: the whole loader).
    """
    return DataLoaderForwardLoop(data_loader, collect_func=collect_func, max_batches=max_batches)


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def recalibrate_batchnorm(
    model: nn.Module,
    forward_loop: ForwardLoop,
    *,
    min_batches: int = DEFAULT_MIN_CALIBRATION_BATCHES,
    strict: bool = False,
) -> int:
    """Re-estimate the running statistics of every batch norm in ``model`` from ``forward_loop``'s data.

    Statistics are reset and re-estimated as a cumulative average over all batches (momentum None),
    with batch norms in train mode, every other module in eval mode (no dropout) and gradients off.
    Training flags and momenta are restored afterwards. Batches are counted as calls of ``model``.

    Returns:
        The number of batches seen (0 for a model without batch norm, which is left untouched).

    Raises:
        CalibrationError: no batch reached the model, or fewer than ``min_batches`` with ``strict``;
            the previous statistics are then put back. Any error of ``forward_loop`` also puts them back.

    Warns:
        UserWarning: fewer than ``min_batches`` batches were seen (not strict); the estimate is kept.
    """
    bns = _batchnorms(model)
    if not bns:
        return 0
    flags = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = {bn: {k: v.clone() for k, v in bn.named_buffers(recurse=False)} for bn in bns}
    num_batches = 0

    def _count(_module: nn.Module, _args: Any) -> None:
        nonlocal num_batches
        num_batches += 1

    handle = model.register_forward_pre_hook(_count)
    ok = False
    try:
        for module in flags:
            module.training = isinstance(module, _BatchNorm)
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        with torch.no_grad():
            forward_loop(model)
        if num_batches == 0:
            raise CalibrationError(
                "batch-norm recalibration saw no batch: the forward loop never called the model (empty "
                "data loader?); statistics left unchanged"
            )
        if num_batches < min_batches and strict:
            raise CalibrationError(
                f"batch-norm recalibration saw only {num_batches} batch(es), fewer than min_batches="
                f"{min_batches}; provide more calibration data or lower min_batches; statistics left unchanged"
            )
        ok = True
    finally:
        handle.remove()
        for module, flag in flags.items():
            module.training = flag
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        if not ok:
            with torch.no_grad():
                for bn, buffers in saved.items():
                    for name, value in buffers.items():
                        # the raw buffer, not ``getattr``: on a dynamic (sliced) BN that is a narrower view
                        raw = bn._buffers[name]
                        if raw is not None:
                            raw.copy_(value)
    if num_batches < min_batches:
        warnings.warn(
            f"batch-norm statistics were re-estimated from only {num_batches} batch(es) (min_batches="
            f"{min_batches}); they may be inaccurate: provide more calibration data",
            UserWarning,
            stacklevel=2,
        )
    return num_batches
