"""Functions on a model converted by a NAS mode: select/sample subnets, inspect, profile, recalibrate."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from modeopt_core import ConfigError, make_forward_loop, recalibrate_batchnorm
from modeopt_core.sdk import DEFAULT_MIN_CALIBRATION_BATCHES, unpack_dummy_input

from .mode import get_search_space, has_search_space
from .profile import SubnetProfiler
from .search_space import SearchSpace

__all__ = [
    "DEFAULT_CALIBRATION_BATCHES",
    "get_subnet_config",
    "print_search_space",
    "profile_search_space",
    "profile_subnet",
    "recalibrate_bn",
    "sample",
    "search_space_size",
    "select",
]

DEFAULT_CALIBRATION_BATCHES = 50
"""Batches :func:`recalibrate_bn` reads from a data loader unless told otherwise."""


def _settled_space(model: nn.Module) -> SearchSpace:
    return get_search_space(model).settled()


def _noted(space: SearchSpace) -> None:
    if space.driver is not None:
        space.driver.note_selection()


def select(model: nn.Module, config: Mapping[str, int], strict: bool = True) -> None:
    """Activate subnet ``config`` (``{hparam name: value}``); it stays active in ``eval()``.

    With ``strict`` every configurable hparam must be named. On error the subnet is unchanged.
    Batch-norm statistics are not touched: call :func:`recalibrate_bn` before evaluating.
    """
    space = _settled_space(model)
    space.select(config, strict=strict)
    _noted(space)


def sample(model: nn.Module, mode: str = "random", seed: int | random.Random | None = None) -> dict[str, int]:
    """Activate the ``"max"``, ``"min"``, ``"original"`` or a ``"random"`` subnet; return its config.

    Args:
        seed: an int or a ``random.Random`` for reproducible random subnets (None: the global ``random``).
    """
    if isinstance(seed, bool) or (seed is not None and not isinstance(seed, (int, random.Random))):
        raise ConfigError(f"seed must be None, an int or a random.Random, got {seed!r}")
    rng = random.Random(seed) if isinstance(seed, int) else seed
    space = _settled_space(model)
    config = space.sample(mode, rng=rng)
    _noted(space)
    return config


def get_subnet_config(model: nn.Module) -> dict[str, int]:
    """The selected subnet (``{hparam name: value}`` of every configurable hparam)."""
    return _settled_space(model).config()


def search_space_size(model: nn.Module) -> int:
    """The number of subnets in the model's search space."""
    return get_search_space(model).size()


def print_search_space(model: nn.Module, include_frozen: bool = False) -> str:
    """A table of the hparams (choices, active and original values) as a string; prints nothing."""
    return _settled_space(model).table(include_frozen=include_frozen)


def _profiler(model: nn.Module, dummy_input: Any) -> SubnetProfiler:
    space = _settled_space(model)
    args, kwargs = unpack_dummy_input(dummy_input)
    with space.driver_paused():
        return SubnetProfiler(space, *args, **kwargs)


def profile_subnet(model: nn.Module, dummy_input: Any, config: Mapping[str, int] | None = None) -> dict[str, int]:
    """``{"flops", "params"}`` of the selected subnet, or of ``config`` (without selecting it).

    Counted analytically after one forward pass on ``dummy_input`` (see :class:`SubnetProfiler`).
    """
    profiler = _profiler(model, dummy_input)
    return {"flops": profiler.flops(config), "params": profiler.params(config)}


def profile_search_space(model: nn.Module, dummy_input: Any) -> dict[str, dict[str, int]]:
    """``{"min", "max", "original", "selected"}`` -> ``{"flops", "params"}`` over the search space."""
    space = _settled_space(model)
    profiler = _profiler(model, dummy_input)
    out: dict[str, dict[str, int]] = {}
    for name, pick in (("min", "min"), ("max", "max"), ("original", "original")):
        config = {n: getattr(hp, pick) for n, hp in space.named_hparams(True)}
        out[name] = {"flops": profiler.flops(config), "params": profiler.params(config)}
    out["selected"] = {"flops": profiler.flops(), "params": profiler.params()}
    return out


def recalibrate_bn(
    model: nn.Module,
    data_loader: Iterable[Any] | None = None,
    *,
    forward_loop: Callable[[nn.Module], Any] | None = None,
    collect_func: Callable[[Any], Any] | None = None,
    max_batches: int | None = DEFAULT_CALIBRATION_BATCHES,
    min_batches: int = DEFAULT_MIN_CALIBRATION_BATCHES,
    strict: bool = False,
) -> int:
    """Reset and re-estimate batch-norm statistics for the selected subnet; return the batches seen.

    Give either ``data_loader`` (at most ``max_batches`` of its batches are used; ``collect_func(batch)``
    returns the model input, default: the first item of a tuple batch) or ``forward_loop(model)``.
    Works on any model (a supernet, an exported subnet, a plain model).

    Raises:
        CalibrationError: no batch reached the model, or fewer than ``min_batches`` with ``strict``
            (the previous statistics are kept).

    Warns:
        UserWarning: fewer than ``min_batches`` batches (not strict), naming the count.
    """
    if (data_loader is None) == (forward_loop is None):
        raise ConfigError("recalibrate_bn needs exactly one of data_loader or forward_loop")
    loop = forward_loop
    if data_loader is not None:
        loop = make_forward_loop(data_loader, collect_func=collect_func, max_batches=max_batches)
    assert loop is not None
    if not has_search_space(model):
        return recalibrate_batchnorm(model, loop, min_batches=min_batches, strict=strict)
    space = _settled_space(model)
    with space.driver_paused():
        seen = recalibrate_batchnorm(model, loop, min_batches=min_batches, strict=strict)
        if space.driver is not None and seen:
            space.driver.note_calibrated()
    return seen
