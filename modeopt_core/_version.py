"""The installed distribution's version (looked up on first access of ``modeopt_core.__version__``)."""

from __future__ import annotations

import importlib.metadata as _md

try:
    __version__ = _md.version("modeopt-core")
except _md.PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0+unknown"
