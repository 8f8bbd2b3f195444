"""Package faces whose names load on first access (PEP 562), so that ``import`` costs almost nothing.

Why not the ``lazy_loader`` package: it would be a runtime dependency of every distribution for the
twenty lines below, and its stub-driven mode parses a ``.pyi`` file at every import. Type checkers
see the names through each face's ``if TYPE_CHECKING:`` imports; ``tests/test_lazy_faces.py`` checks
that those and the table below agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    face: str, exports: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the module ``face`` whose public ``name`` lives in ``exports[name]``.

    ``exports`` maps each name to the module defining it, relative to ``face``'s package as in a
    relative import (``"conversion"`` for ``from .conversion import name``); each of ``submodules``
    (``"sdk"``) is a name that is that submodule itself. A loaded name is stored in the face's
    namespace, so only its first access goes through ``__getattr__``. Call it from the face itself
    (``__getattr__, __dir__ = lazy_exports(__name__, ...)``).
    """
    modules = frozenset(submodules)
    anchor = sys.modules[face].__package__

    def __getattr__(name: str) -> Any:
        if name in modules:
            value = importlib.import_module(f".{name}", anchor)
        elif name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", anchor), name)
        else:
            raise AttributeError(f"module {face!r} has no attribute {name!r}")
        setattr(sys.modules[face], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[face])) | set(exports) | modules)

    return __getattr__, __dir__
