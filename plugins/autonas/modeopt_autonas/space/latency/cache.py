"""The on-disk latency cache: one modeopt state file per measuring context, validated before use.

A *context* is everything a measured latency depends on besides the layer itself: the device name
(CPU model and vector capability, or the GPU), the torch version, the intra-op thread count, the
dtype and the timer class. Each context has its own file,
``<cache dir>/latency-<hash of the context>.safetensors``, written with
:func:`modeopt_core.write_state_file` (atomic, digest-checked, no pickle) and holding:

* ``context``: the context itself (compared on load, so a renamed file is never trusted);
* ``entries``: ``{layer signature: {"64,128": [median ms, spread], ...}}``, one row per measured axis
  tuple (see :mod:`.units`);
* ``calibrations``: ``{model key: calibration record}`` (see :mod:`.calibration`).

The cache directory is, in order: the ``cache_dir`` option, ``$MODEOPT_CACHE_DIR/latency``,
``$XDG_CACHE_HOME/modeopt/latency``, ``~/.cache/modeopt/latency``.

A file that cannot be read or does not hold exactly this layout raises :class:`LatencyCacheError`
naming the file and the problem; the latency model then warns (:class:`LatencyCacheWarning`), moves
the file aside to ``<name>.corrupt`` and measures afresh. Writing merges with what another process
may have written meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeopt_core import CheckpointError, read_state_file, write_state_file

from ..errors import SearchSpaceError

__all__ = ["CACHE_KIND", "LatencyCache", "LatencyCacheError", "LatencyCacheWarning", "default_latency_cache_dir"]

CACHE_KIND = "latency-table"
_VERSION = 1


class LatencyCacheError(SearchSpaceError):
    """A latency cache file is unreadable, corrupted or not a latency cache (the message names it)."""


class LatencyCacheWarning(UserWarning):
    """A latency cache file was unusable and is rebuilt (the message names the file and the problem)."""


def default_latency_cache_dir() -> Path:
    """Where latency tables are cached unless told otherwise (see the module doc)."""
    root = os.environ.get("MODEOPT_CACHE_DIR")
    if root:
        return Path(root) / "latency"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "modeopt" / "latency"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_entries(entries: Any, where: str) -> dict[str, dict[str, list[float]]]:
    if not isinstance(entries, dict):
        raise ValueError(f"{where} is a {type(entries).__name__}, not a dict")
    for sig, rows in entries.items():
        if not isinstance(sig, str) or not isinstance(rows, dict):
            raise ValueError(f"{where} has a malformed layer entry {str(sig)[:80]!r}")
        for key, row in rows.items():
            parts = key.split(",") if isinstance(key, str) and key else []
            if not isinstance(key, str) or not all(p.isdigit() for p in parts):
                raise ValueError(f"{where} has a malformed width key {key!r}")
            if not (isinstance(row, list) and len(row) == 2 and all(_finite(v) and v >= 0 for v in row)):
                raise ValueError(f"{where}[{key!r}] = {row!r} is not [milliseconds >= 0, spread >= 0]")
    return entries


def _check_calibrations(records: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(records, dict):
        raise ValueError(f"calibrations is a {type(records).__name__}, not a dict")
    for key, rec in records.items():
        fields = {"slope", "offset", "points"}
        if not isinstance(rec, dict) or not fields <= set(rec):
            raise ValueError(f"calibration {key!r} lacks {sorted(fields)}")
        if not (_finite(rec["slope"]) and _finite(rec["offset"])):
            raise ValueError(f"calibration {key!r} has a non-finite slope or offset")
        points = rec["points"]
        if not isinstance(points, list) or not points:
            raise ValueError(f"calibration {key!r} has no points")
        for p in points:
            if not (isinstance(p, dict) and isinstance(p.get("config"), dict) and _finite(p.get("raw"))
                    and _finite(p.get("measured")) and p["measured"] > 0):
                raise ValueError(f"calibration {key!r} has a malformed point {p!r}"[:200])
    return records


class LatencyCache:
    """The cache file of one context (see the module doc); an empty cache when the file does not exist.

    Args:
        directory: the cache directory (created on first save).
        context: JSON-able description of the measuring context.
    """

    def __init__(self, directory: str | os.PathLike[str], context: Mapping[str, Any]) -> None:
        self.context = json.loads(json.dumps(dict(context), sort_keys=True))
        digest = hashlib.sha256(json.dumps(self.context, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(directory) / f"latency-{digest}.safetensors"
        self.entries: dict[str, dict[str, list[float]]] = {}
        self.calibrations: dict[str, dict[str, Any]] = {}

    def load(self) -> bool:
        """Read the file if it exists (returns whether it did); raise :class:`LatencyCacheError` if it is bad."""
        if not self.path.exists():
            return False
        self.entries, self.calibrations = self._read()
        return True

    def _read(self) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, Any]]]:
        try:
            data = read_state_file(self.path, kind=CACHE_KIND)
        except CheckpointError as exc:
            raise LatencyCacheError(f"latency cache {self.path} is unreadable: {exc}") from exc
        try:
            if set(data) != {"version", "context", "entries", "calibrations"}:
                raise ValueError(f"unexpected layout (keys {sorted(data)})")
            if data["version"] != _VERSION:
                raise ValueError(f"format version {data['version']!r}, expected {_VERSION}")
            if data["context"] != self.context:
                raise ValueError(f"it was measured in another context ({data['context']!r})")
            return _check_entries(data["entries"], "entries"), _check_calibrations(data["calibrations"])
        except ValueError as exc:
            raise LatencyCacheError(f"latency cache {self.path} is not a valid latency table: {exc}") from None

    def set_aside(self) -> Path:
        """Move an unusable file to ``<name>.corrupt`` (replacing an older one); returns the new path."""
        target = self.path.with_name(self.path.name + ".corrupt")
        os.replace(self.path, target)
        self.entries, self.calibrations = {}, {}
        return target

    def save(self) -> None:
        """Write the file atomically, merged with entries another process wrote since :meth:`load`."""
        entries = {sig: dict(rows) for sig, rows in self.entries.items()}
        calibrations = dict(self.calibrations)
        if self.path.exists():
            try:
                theirs, their_cal = self._read()
            except LatencyCacheError:
                theirs, their_cal = {}, {}  # replaced by ours: a bad file is never merged
            for sig, rows in theirs.items():
                entries[sig] = {**rows, **entries.get(sig, {})}
            calibrations = {**their_cal, **calibrations}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": _VERSION, "context": self.context, "entries": entries, "calibrations": calibrations}
        write_state_file(self.path, data, kind=CACHE_KIND)
        self.entries, self.calibrations = entries, calibrations
