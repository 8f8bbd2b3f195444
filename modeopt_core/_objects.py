"""Objects named by ``"package.module:attr.path"`` references (command-line factories, config strings)."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError

__all__ = ["load_object"]


def load_object(reference: str, what: str, *, callable_hint: str = "") -> Any:
    """The callable ``reference`` names, imported (which runs the module's code: only for references the
    user gave). ``what`` starts every error message (``"--model"``, ``"teacher factory"``).

    Raises:
        ConfigError: the reference is malformed, the module does not import, an attribute is missing or
            the object is not callable (``callable_hint`` is appended to that message).
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {reference!r} must look like MODULE:NAME (e.g. torchvision.models:resnet18)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {reference!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} {reference!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{what} {reference!r} is not callable{callable_hint}")
    return obj
