"""Argument checks of the public functions: a wrong type is an :class:`ArgumentError` naming the argument."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .errors import ArgumentError

__all__ = ["describe", "require_module", "require_path"]


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages (type and a clipped repr)."""
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    text = repr(value)
    return f"{name} {text[:80] + '...' if len(text) > 80 else text}"


def require_module(value: Any, func: str, arg: str = "model") -> nn.Module:
    """``value`` if it is an ``nn.Module``, else an ArgumentError naming ``func`` and ``arg``."""
    if not isinstance(value, nn.Module):
        raise ArgumentError(
            f"{func}() argument {arg!r} must be a torch.nn.Module, got {describe(value)}; pass the model "
            "instance itself (a DataParallel/DistributedDataParallel wrapper is fine)"
        )
    return value


def require_path(value: Any, func: str, arg: str = "path") -> str:
    """``value`` as a non-empty path string, else an ArgumentError naming ``func`` and ``arg``."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{func}() argument {arg!r} must be a file path (str or os.PathLike), got {describe(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ArgumentError(f"{func}() argument {arg!r} must be a text path, got bytes {text!r}; decode it first")
    if not text.strip():
        raise ArgumentError(f"{func}() argument {arg!r} is empty ({text!r}); pass a file path such as 'model.safetensors'")
    return text
