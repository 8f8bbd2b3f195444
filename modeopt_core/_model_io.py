"""The model side of checkpoints: which tensors a model has, what it will have, loading with bounded memory."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .errors import CheckpointError

__all__ = ["Layout", "layout_of", "load_weights", "meta_shadow", "model_tensors"]

_log = logging.getLogger(__name__)
_EXTRA_STATE = "_extra_state"


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, int]]:
    """Split ``model.state_dict()`` into tensors, non-tensor extra state, and module versions."""
    state_dict = model.state_dict()
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in state_dict.items() if not isinstance(v, torch.Tensor)}
    meta = getattr(state_dict, "_metadata", None) or {}
    versions = {k: m["version"] for k, m in meta.items() if isinstance(m, dict) and type(m.get("version")) is int}
    return tensors, extra, versions


def _own_keys(module: nn.Module, prefix: str) -> list[str]:
    keys = [prefix + n for n, p in module._parameters.items() if p is not None]
    keys += [prefix + n for n, b in module._buffers.items() if b is not None and n not in module._non_persistent_buffers_set]
    if type(module).get_extra_state is not nn.Module.get_extra_state:
        keys.append(prefix + _EXTRA_STATE)
    return keys


def _walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # Every path to every module, as Module.load_state_dict visits them (shared modules once per path).
    return [(f"{name}." if name else "", module) for name, module in model.named_modules(remove_duplicate=False)]


@dataclass(frozen=True)
class Layout:
    """What ``state_dict()`` of a model holds: tensor shapes and non-tensor (extra state) keys."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    extra_keys: frozenset[str]
    #: per-module loading sees exactly the state_dict keys (no state-dict hooks renaming keys)
    bounded: bool


def layout_of(model: nn.Module) -> Layout:
    """The state-dict layout of ``model`` (works on meta-device models)."""
    state_dict = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    dtypes = {k: v.dtype for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    extra = frozenset(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    walked = {key for prefix, module in _walk(model) for key in _own_keys(module, prefix)}
    return Layout(shapes, dtypes, extra, walked == set(state_dict))


def meta_shadow(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are data-less ``meta`` tensors.

    The ``copy.deepcopy`` memo maps every parameter/buffer to its meta stand-in, so no weight data is
    copied; ties survive because a shared tensor maps to one stand-in.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in module._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def load_weights(
    model: nn.Module,
    fetch: Callable[[str], torch.Tensor],
    extra: Mapping[str, Any],
    versions: Mapping[str, int],
    *,
    bounded: bool,
) -> None:
    """Copy the checkpoint's tensors into ``model`` (names and shapes already validated).

    With ``bounded`` (the usual case) modules are loaded one at a time through their own
    ``_load_from_state_dict`` (so BatchNorm versions, extra state and load hooks behave as in
    ``load_state_dict``), fetching only that module's tensors: peak memory is the model plus its largest
    module. Otherwise everything is fetched and handed to ``load_state_dict``.
    """

    def value(key: str) -> Any:
        return extra[key] if key in extra else fetch(key)

    missing: list[str] = []
    unexpected: list[str] = []
    errors: list[str] = []
    try:
        if not bounded:
            _log.info("model renames keys in state-dict hooks; loading all tensors at once (2x weight memory)")
            full = {k: value(k) for k in [*model.state_dict().keys()]}
            result = model.load_state_dict(full, strict=True)
            del full
            missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        else:
            with torch.no_grad():
                for prefix, module in _walk(model):
                    local = {k: value(k) for k in _own_keys(module, prefix)}
                    meta = {"version": versions[prefix[:-1]]} if prefix[:-1] in versions else {}
                    module._load_from_state_dict(local, prefix, meta, True, missing, unexpected, errors)
                    del local
            incompatible = _IncompatibleKeys(missing, unexpected)
            for _, module in _walk(model):
                for hook in module._load_state_dict_post_hooks.values():
                    hook(module, incompatible)
    except Exception as exc:  # a module's own loading code (set_extra_state, load hooks) refused a value
        errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
    if missing or unexpected or errors:
        raise CheckpointError(
            "loading weights failed after validation, in a module's own loading code: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, errors {errors[:3]}"
        )
