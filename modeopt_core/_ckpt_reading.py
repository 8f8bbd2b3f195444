"""Reading a model checkpoint before anything is restored: header tables, decoded state, modes, fit.

Every value taken from the file is validated (type and range, with pydantic schemas for the
tables) before it is used, and printed only quoted and clipped: a forged file can make a restore
fail, never crash it with an untyped error or make it print text of the file's choosing as advice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, StrictStr, TypeAdapter, ValidationError
from torch import nn

from ._codec import RESERVED_PREFIX, decode, from_json
from ._container import Header, bad, parse_aliases
from ._model_io import Layout
from ._reader import ContainerFile
from .conversion import validate_modeopt_state
from .errors import CheckpointError, ModeNotFoundError, ModeoptError
from .plugins import plugin_failures
from .registry import list_modes, mode_provider

__all__ = [
    "EXTRA_PREFIX",
    "STATE_PREFIX",
    "Checkpoint",
    "clip",
    "decode_state",
    "mismatch",
    "read_checkpoint",
    "validate_state",
]

_log = logging.getLogger(__name__)

STATE_PREFIX = RESERVED_PREFIX + "state/"
EXTRA_PREFIX = RESERVED_PREFIX + "extra/"
_SHOW = 5  # names listed per category in mismatch reports
_PEP508_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` clipped to ``limit`` characters: file content quoted, never raw, never huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- schemas of the tables
_Providers = TypeAdapter(dict[StrictStr, Annotated[list[StrictStr], Field(min_length=2, max_length=2)]])
_Versions = TypeAdapter(dict[StrictStr, Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]])


class _ModeEntry(BaseModel):
    model_config = ConfigDict(strict=True)

    name: Annotated[str, Field(min_length=1, max_length=200)]
    config: dict[str, JsonValue] | None = None
    metadata: dict[Any, Any] | None = None


class _State(BaseModel):
    model_config = ConfigDict(strict=True)

    state_version: int = 1
    modeopt_version: str | None = None
    modes: list[_ModeEntry]


_Extra = TypeAdapter(dict[StrictStr, Any])


def _validated(header: Header, adapter: Any, value: Any, what: str) -> Any:
    try:
        if isinstance(adapter, type) and issubclass(adapter, BaseModel):
            return adapter.model_validate(value)
        return adapter.validate_python(value, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top>"
        raise bad(header.path, f"malformed {what!r} in the header at {clip(where, 60)}: {first['msg']} "
                               "(the file is damaged or was not written by modeopt)") from None


# --------------------------------------------------------------------------- the checkpoint
@dataclass(frozen=True)
class Checkpoint:
    """The validated header tables of a model checkpoint (weights stay in the file)."""

    header: Header
    state_tree: Any
    extra_tree: Any
    providers: dict[str, tuple[str, str]]
    aliases: dict[str, str]
    versions: dict[str, int]

    @property
    def path(self) -> str:
        return str(self.header.path)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.header.tensors[self.aliases.get(name, name)].shape

    def dtype_of(self, name: str) -> str:
        return self.header.tensors[self.aliases.get(name, name)].dtype

    def weight_names(self) -> set[str]:
        names = set(self.header.tensors) | set(self.aliases)
        return {n for n in names if not n.startswith(RESERVED_PREFIX)}


def _field(header: Header, key: str, default: str | None = None) -> Any:
    text = header.metadata.get(key, default)
    if text is None:
        raise bad(header.path, f"header lacks {key!r}; the file is damaged or not a modeopt checkpoint")
    try:
        return from_json(text, key)
    except CheckpointError as exc:
        raise bad(header.path, str(exc)) from None


def read_checkpoint(f: ContainerFile, *, verify: bool = True) -> Checkpoint:
    """The validated tables of the (format-checked) checkpoint ``f``; ``verify`` checks the digest first."""
    header = f.header
    if verify:
        f.verify_digest()
    providers = _validated(header, _Providers, _field(header, "mode_provider", "{}"), "mode_provider")
    versions = _validated(header, _Versions, _field(header, "module_versions", "{}"), "module_versions")
    return Checkpoint(
        header=header,
        state_tree=_field(header, "state"),
        extra_tree=_field(header, "extra_state", "{}"),
        providers={k: (v[0], v[1]) for k, v in providers.items()},
        aliases=parse_aliases(header, header.metadata.get("aliases", "{}")),
        versions=versions,
    )


def decode_state(ckpt: Checkpoint, load: Callable[[str], torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoded, schema-checked mode state and extra state."""
    header = ckpt.header
    try:
        state = decode(ckpt.state_tree, load, prefix=STATE_PREFIX)
        extra = decode(ckpt.extra_tree, load, prefix=EXTRA_PREFIX)
    except CheckpointError as exc:
        raise bad(header.path, str(exc)) from None
    if not isinstance(state, dict) or not isinstance(state.get("modes"), list):
        raise bad(header.path, "stored state is not a modeopt state (expected a dict with a 'modes' list)")
    if not isinstance(extra, dict):
        raise bad(header.path, "stored extra state is not a dict")
    _validated(header, _State, state, "state")
    _validated(header, _Extra, extra, "extra_state")
    return state, extra


def mode_names(state: dict[str, Any]) -> list[str]:
    """The mode names of a schema-checked state, in order."""
    return [e["name"] for e in state["modes"]]


# --------------------------------------------------------------------------- modes available?
def _valid_distribution(name: str) -> bool:
    return _PEP508_NAME.fullmatch(name) is not None


def _valid_version(version: str) -> bool:
    if not version or len(version) > 64 or version != version.strip():
        return False
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def _missing_mode_advice(name: str, dist: str, version: str) -> str:
    mode = clip(name, 60)
    if dist == "<unregistered>":
        return (f"mode {mode} was registered explicitly (not from an installed plugin) when saved: register the same "
                "mode before restoring")
    if not _valid_distribution(dist):
        return (f"mode {mode} was provided by a distribution recorded as {clip(dist, 60)}, which is not a valid "
                "package name (the file is damaged or forged): install the plugin that provides this mode")
    pin = version if _valid_version(version) else ""
    wanted = canonicalize_name(dist)
    for failure in plugin_failures():
        if _valid_distribution(failure.distribution) and canonicalize_name(failure.distribution) == wanted:
            return (f"mode {mode} comes from {failure.distribution} {failure.version}, which is installed but failed "
                    f"to load: {clip(failure.error, 300)}; fix that error (`modeopt plugins` lists plugin failures)")
    saved = f"{dist} {pin}".strip()
    spec = f"{dist}=={pin}" if pin else dist
    return f"mode {mode} was provided by {saved} when saved: install it (pip install '{spec}') or enable that plugin"


def validate_state(ckpt: Checkpoint, state: dict[str, Any]) -> None:
    """Every mode available, every config valid, the chain allowed; raise CheckpointError saying what to do."""
    path = ckpt.path
    try:
        validate_modeopt_state(state)
    except ModeNotFoundError as exc:
        known = set(list_modes())
        lines = [_missing_mode_advice(n, *ckpt.providers.get(n, ("<unknown>", "")))
                 for n in dict.fromkeys(n for n in mode_names(state) if n not in known)]
        raise CheckpointError(f"{path}: the checkpoint needs modes that are not available; " + "; ".join(lines)) from exc
    except ModeoptError as exc:
        raise CheckpointError(f"{path}: the recorded modes cannot be restored: {exc}") from exc
    for name in mode_names(state):
        saved, now = ckpt.providers.get(name), mode_provider(name)
        if saved is not None and tuple(saved) != tuple(now):
            _log.warning("mode %r was saved with %s %s and is now provided by %s %s", name,
                         clip(saved[0], 60), clip(saved[1], 40), *now)


# --------------------------------------------------------------------------- fit with the model
def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(clip(i, 120) if not i.isprintable() or len(i) > 120 else i for i in items[:_SHOW]) + more


def mismatch(ckpt: Checkpoint, layout: Layout, extra: dict[str, Any], model: nn.Module, modes: list[str]) -> str | None:
    """What keeps the file from fitting ``layout`` (None when it fits exactly)."""
    stored = ckpt.weight_names()
    expected = set(layout.shapes) | set(layout.extra_keys)
    in_file = stored | set(extra)
    missing = sorted(expected - in_file)
    unexpected = sorted(in_file - expected)
    wrong_kind = sorted(f"{n}: the model holds a tensor, the file other state" for n in set(extra) & set(layout.shapes))
    wrong_kind += sorted(f"{n}: the model holds other state, the file a tensor" for n in stored & layout.extra_keys)
    shapes = sorted(
        f"{n}: file {ckpt.shape_of(n)} vs model {layout.shapes[n]}"
        for n in layout.shapes.keys() & stored
        if ckpt.shape_of(n) != layout.shapes[n]
    )
    complex_into_real = sorted(
        n for n in layout.shapes.keys() & stored if ckpt.dtype_of(n) == "C64" and not layout.dtypes[n].is_complex
    )
    if not (missing or unexpected or wrong_kind or shapes or complex_into_real):
        return None
    saved_class = clip(ckpt.header.metadata.get("model_class", "?"), 100)
    lines = [
        f"{ckpt.path}: the checkpoint does not fit this model (saved from {saved_class} with modes {clip(modes, 200)}; "
        f"restoring into {_class_name(model)}):"
    ]
    for label, items in (("missing in the file", missing), ("unexpected in the file", unexpected),
                         ("stored as the wrong kind", wrong_kind), ("shape mismatch", shapes),
                         ("complex in the file, real in the model", complex_into_real)):
        if items:
            lines.append(f"  {label} ({len(items)}): {_listed(items)}")
    lines.append("Build the model exactly as it was before its modes were applied at save time (same class and "
                 "constructor arguments) and call restore() on that fresh model; the model was not changed.")
    return "\n".join(lines)
