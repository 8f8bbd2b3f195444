"""Validation of search-checkpoint state read back from a file (untrusted until checked).

A search checkpoint is a state file anyone can edit (its digest detects accidents, not forgery), so
every attribute of the searcher's state is checked against a schema (pydantic, strict: no coercion
of "3" to 3 or of True to 1) and the random generator's state is range-checked before anything is
assigned. Searchers declare their attributes' types in ``BaseSearcher.state_schema`` and add checks
that need the search space (valid choices, ...) in ``BaseSearcher.validate_state``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from .errors import CheckpointError

__all__ = [
    "CandidateRecord",
    "FiniteFloat",
    "NonNegativeInt",
    "SubnetConfig",
    "check_state_schema",
    "decode_rng_state",
    "encode_rng_state",
    "state_error",
]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0, le=2**62)]
SubnetConfig = dict[str, JsonValue]
"""A candidate's config as recorded (hparam name -> JSON value)."""

_MT_WORDS = 624  # Mersenne Twister state: 624 32-bit words and a position in 0..624


class CandidateRecord(BaseModel):
    """One entry of an iterative search's history (other keys allowed, typed by subclasses)."""

    model_config = ConfigDict(strict=True, extra="allow")

    iteration: NonNegativeInt
    config: SubnetConfig
    satisfied: bool
    constraints: dict[str, FiniteFloat]
    score: FiniteFloat | None
    cached: bool
    is_best: bool


def state_error(what: str, why: str) -> CheckpointError:
    """The error for a search checkpoint whose state does not hold up (the caller adds the path)."""
    return CheckpointError(f"search checkpoint state {what}: {why}; the file is damaged or was edited: delete it "
                           "(or pass another checkpoint path) to start afresh")


def encode_rng_state(rng: random.Random) -> list[Any]:
    """``rng``'s state as JSON-able data."""
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def decode_rng_state(data: Any) -> tuple[Any, ...]:
    """The ``random.Random.setstate`` argument, after checking every value's type and range."""
    if not (isinstance(data, (list, tuple)) and len(data) == 3):
        raise state_error("rng_state", "expected [version, words, gauss_next]")
    version, words, gauss_next = data
    if type(version) is not int or version != 3:
        raise state_error("rng_state", f"unsupported generator state version {str(version)[:20]}")
    if not isinstance(words, (list, tuple)) or len(words) != _MT_WORDS + 1:
        raise state_error("rng_state", f"expected {_MT_WORDS + 1} integers")
    if not all(type(w) is int and 0 <= w < 2**32 for w in words[:-1]):
        raise state_error("rng_state", "generator words must be integers in [0, 2**32)")
    if type(words[-1]) is not int or not 0 <= words[-1] <= _MT_WORDS:
        raise state_error("rng_state", f"generator position must be an integer in [0, {_MT_WORDS}]")
    if gauss_next is not None and type(gauss_next) is not float:
        raise state_error("rng_state", "gauss_next must be a float or None")
    return (version, tuple(words), gauss_next)


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def check_state_schema(schema: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Validate ``state[name]`` against ``schema[name]`` (a type annotation) for every name in ``schema``."""
    for name, annotation in schema.items():
        try:
            adapter = _ADAPTERS.get(annotation)
        except TypeError:  # an unhashable annotation: build it each time
            adapter = TypeAdapter(annotation)
        if adapter is None:
            adapter = _ADAPTERS[annotation] = TypeAdapter(annotation)
        try:
            adapter.validate_python(state[name], strict=True)
        except ValidationError as err:
            first = err.errors()[0]
            where = "".join(f"[{p!r}]" for p in first["loc"])
            raise state_error(f"{name}{where[:80]}", first["msg"]) from None
