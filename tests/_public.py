"""Pinning a package's public face the httpx way: what ``vars()`` shows must be exactly ``__all__``."""

from __future__ import annotations
import __future__

import types
from typing import Any


def public_names(module: types.ModuleType) -> set[str]:
    """Every non-underscore name the module defines or imports, except submodules and ``annotations``.

    Lazy names (PEP 562 ``__getattr__``) count once accessed, so every name of ``__all__`` is
    accessed first.
    """
    for name in getattr(module, "__all__", ()):
        getattr(module, name)
    out = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name == "annotations" and value is __future__.annotations:
            continue
        out.add(name)
    return out


def assert_face(module: types.ModuleType, expected: set[str], **_: Any) -> None:
    """``__all__`` is ``expected``, and ``vars(module)`` shows no other public name."""
    assert set(module.__all__) == expected, sorted(set(module.__all__) ^ expected)
    leaked = public_names(module) - set(module.__all__)
    assert not leaked, f"{module.__name__} shows names that are not in __all__ (prefix them with _): {sorted(leaked)}"
