"""Search config helpers: validation of config values, JSON fingerprints and candidate keys.

A search config is a plain dict (reference-compatible keys). Searchers merge it with their
``default_search_config`` and validate each value with the ``check_*`` functions below, which raise
:class:`~modeopt_core.errors.ConfigError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import ConfigError

__all__ = [
    "candidate_key",
    "check_bool",
    "check_callable",
    "check_float",
    "check_int",
    "check_known_keys",
    "check_path",
    "describe_value",
    "fingerprint_diff",
    "json_part",
]


def check_known_keys(config: Mapping[str, Any], accepted: Iterable[str], owner: str) -> None:
    """Raise ConfigError naming unknown keys, close matches and every accepted key."""
    accepted = sorted(accepted)
    unknown = [k for k in config if k not in accepted]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), accepted, n=1)
        if close:
            hints.append(f"{key!r} -> did you mean {close[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ConfigError(f"unknown search config key(s) {unknown} for {owner}{hint}; accepted keys: {accepted}")


def check_int(config: Mapping[str, Any], key: str, *, minimum: int | None = None, allow_none: bool = False) -> None:
    """``config[key]`` must be an int (not bool), at least ``minimum``, or None if allowed."""
    value = config[key]
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum):
        return
    expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
    raise ConfigError(f"search config {key}={value!r} is invalid; expected {expected}")


def check_float(
    config: Mapping[str, Any],
    key: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
) -> None:
    """``config[key]`` must be a finite real number within ``[minimum, maximum]``, or None if allowed."""
    value = config[key]
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return
    bounds = f" in [{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
    raise ConfigError(
        f"search config {key}={value!r} is invalid; expected a finite number{bounds}"
        + (" or None" if allow_none else "")
    )


def check_bool(config: Mapping[str, Any], key: str) -> None:
    """``config[key]`` must be True or False."""
    if not isinstance(config[key], bool):
        raise ConfigError(f"search config {key}={config[key]!r} is invalid; expected True or False")


def check_callable(config: Mapping[str, Any], key: str, signature: str) -> None:
    """``config[key]`` must be None or a callable (``signature`` documents the expected call)."""
    if config[key] is not None and not callable(config[key]):
        raise ConfigError(
            f"search config {key}={config[key]!r} is not callable; expected None or a function {signature}"
        )


def check_path(config: Mapping[str, Any], key: str) -> None:
    """``config[key]`` must be None, a str or an ``os.PathLike``."""
    if config[key] is not None and not isinstance(config[key], (str, os.PathLike)):
        raise ConfigError(f"search config {key}={config[key]!r} is invalid; expected None or a file path")


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, numbers.Real):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def json_part(config: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The keys of ``config`` whose values are plain JSON data (functions, loaders etc. are dropped)."""
    skip = set(exclude)
    return {k: json.loads(json.dumps(v)) for k, v in sorted(config.items()) if k not in skip and _is_json_value(v)}


def describe_value(value: Any) -> Any:
    """A JSON description of a (dummy) input: tensors by shape and dtype, containers recursively."""
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe_value(v) for k, v in value.items()}
    if _is_json_value(value):
        return value
    return {"type": type(value).__name__}


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON fingerprints (``"config.num_iters: 5 -> 6"``)."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new), key=repr):  # keys read from a file need not all be str
        path = f"{prefix}{key}"
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs.extend(fingerprint_diff(a, b, prefix=f"{path}."))
        elif a != b:
            diffs.append(f"{path[:100]}: {_clipped(a)} -> {_clipped(b)}")
    return diffs


def _clipped(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def candidate_key(config: Any) -> str:
    """Stable hash of a candidate (subnet) config, used to cache evaluations."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"candidate config {config!r} is not JSON-serialisable ({exc}); sample() must return a dict of "
            "str keys with int/float/str/bool/None/list values"
        ) from exc
    return hashlib.sha256(text.encode()).hexdigest()
