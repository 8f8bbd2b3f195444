"""Progress reporting for long steps: a tqdm bar on a terminal, plain log lines elsewhere, or nothing.

Every component that loops for long (calibration, sensitivity maps, searches, fine-tuning) wraps the
loop in :func:`progress`. What the user sees depends on where stderr goes:

- a terminal: a redrawing tqdm bar on stderr;
- anything else (a file, a CI log, a pipe): one plain ``INFO`` line through :mod:`logging` (logger
  ``modeopt_core.progress``) when the step starts, at most every ``log_interval`` seconds while it
  runs, and when it ends, so logs stay readable and free of carriage returns;
- disabled (``enabled=False``, ``MODEOPT_PROGRESS=off`` or the CLI's ``--quiet``): nothing at all.

Under ``torch.distributed`` only rank 0 reports; the other ranks' bars are silent.

The environment variable ``MODEOPT_PROGRESS`` (``auto``, ``bar``, ``log`` or ``off``) chooses the
style process-wide; :func:`set_progress_mode` overrides it (the CLI uses this for ``--quiet``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

from tqdm import tqdm

from . import distributed
from .errors import ConfigError

__all__ = ["ProgressMode", "progress", "progress_mode", "set_progress_mode"]

_log = logging.getLogger(__name__)

ProgressMode = Literal["auto", "bar", "log", "off"]
_MODES: tuple[str, ...] = ("auto", "bar", "log", "off")
_ENV = "MODEOPT_PROGRESS"
_DEFAULT_LOG_INTERVAL = 10.0

_T = TypeVar("_T")
_override: ProgressMode | None = None


def _check_mode(mode: str, source: str) -> ProgressMode:
    if mode not in _MODES:
        raise ConfigError(f"{source} must be one of {list(_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def progress_mode() -> ProgressMode:
    """The configured style: :func:`set_progress_mode`'s value, else ``$MODEOPT_PROGRESS``, else auto."""
    if _override is not None:
        return _override
    raw = os.environ.get(_ENV, "").strip().lower()
    return _check_mode(raw, f"environment variable {_ENV}") if raw else "auto"


def set_progress_mode(mode: ProgressMode | None) -> ProgressMode | None:
    """Force a style for the whole process (``None`` returns to the environment); return the previous one."""
    global _override
    previous = _override
    _override = None if mode is None else _check_mode(mode, "progress mode")
    return previous


class _NullFile:
    """Where a log-line bar's own drawing goes: nowhere (the log line is its only output)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


class _Bar(tqdm):
    """A plain tqdm bar without tqdm's monitor thread (it only tunes refresh rates, and outlives tests)."""

    monitor_interval = 0


class _LogLineBar(_Bar):
    """A tqdm bar that reports through ``logging``: a start line, periodic lines, and an end line."""

    def __init__(self, *args: Any, log_interval: float, **kwargs: Any) -> None:
        # Set before tqdm's __init__, which draws the first line.
        self._log_interval = log_interval
        self._last_log = -math.inf
        self._closing = False
        super().__init__(*args, file=_NullFile(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._closing or msg == "":
            return True
        now = self._time()
        if now - self._last_log >= self._log_interval:
            self._last_log = now
            _log.info("%s", self._line(final=False))
        return True

    def close(self) -> None:
        if not self.disable and not self._closing:
            self._closing = True
            _log.info("%s", self._line(final=True))
        super().close()

    def _line(self, *, final: bool) -> str:
        now = self._time()
        elapsed = now - getattr(self, "start_t", now)  # tqdm draws its first line before setting start_t
        name = self.desc or "progress"
        if self.n == 0 and not final:
            return f"{name}: started" + (f" ({_count(self.total)} {self.unit})" if self.total else "")
        parts = [f"{name}: "]
        if self.total:
            parts.append(f"{_count(self.n)}/{_count(self.total)} {self.unit} ({100.0 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{_count(self.n)} {self.unit}")
        parts.append(f" in {self.format_interval(elapsed)}")
        if elapsed > 0 and self.n:
            rate = self.n / elapsed
            speed = f"{self.format_sizeof(rate)} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}"
            parts.append(f", {speed}")
            if not final and self.total and self.n < self.total:
                parts.append(f", ~{self.format_interval((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(f", {self.postfix}")
        if final:
            parts.append(" (done)" if not self.total or self.n >= self.total else " (stopped)")
        return "".join(parts)


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def progress(
    iterable: Iterable[_T] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    leave: bool = True,
    log_interval: float = _DEFAULT_LOG_INTERVAL,
) -> tqdm:
    """A progress bar for ``iterable`` (or a manual one, with ``total`` and ``update``).

    Returns a :class:`tqdm.tqdm`: iterate it, or call ``update(n)``, ``set_postfix(loss=...)``,
    ``set_description(...)`` and ``close()`` (or use it as a context manager).

    Args:
        enabled: False makes it completely silent (callers pass their ``verbose`` flag here); ranks
            other than 0 of a process group are always silent.
        log_interval: seconds between two log lines when stderr is not a terminal.
    """
    mode = progress_mode() if enabled and distributed.is_main() else "off"
    if mode == "auto":
        stream = sys.stderr
        mode = "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "log"
    common: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "leave": leave}
    if mode == "off":
        return _Bar(iterable, disable=True, **common)
    if mode == "bar":
        return _Bar(iterable, file=sys.stderr, dynamic_ncols=True, **common)
    if log_interval < 0:
        raise ConfigError(f"log_interval must be >= 0 seconds, got {log_interval}")
    return _LogLineBar(iterable, log_interval=log_interval, mininterval=min(log_interval, 1.0), **common)
