"""Generic state files: a nested dict with tensors, saved as one safetensors file tagged with a kind.

Other components persist their own state through this (e.g. a search checkpoint of kind
``"search/binary"``), so they get atomic writes, integrity checks and pickle-free loading for free::

    write_state_file("search.ckpt", {"iteration": 3, "best": {"score": 0.9}, "mask": tensor},
                     kind="search/binary")
    state = read_state_file("search.ckpt", kind="search/binary")

The data tree is encoded by :mod:`modeopt_core._codec` (tuples, non-str keys and tensors survive).
See ``docs/checkpoint-format.md`` for the layout.
"""

from __future__ import annotations

import os
from typing import Any

from ._codec import RESERVED_PREFIX, decode, encode, from_json, to_json
from ._container import (
    VERSION_KEY,
    TensorReader,
    check_format,
    parse_aliases,
    prepare_tensors,
    read_header,
    verify_digest,
    write_container,
)
from .errors import CheckpointError

__all__ = ["STATE_FILE_FORMAT", "STATE_FILE_VERSION", "read_state_file", "write_state_file"]

STATE_FILE_FORMAT = "modeopt-state"
STATE_FILE_VERSION = 1
_PREFIX = RESERVED_PREFIX + "data/"


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind or kind != kind.strip():
        raise CheckpointError(f"kind must be a non-empty string without surrounding spaces, got {kind!r}")


def write_state_file(path: str | os.PathLike[str], data: dict[str, Any], *, kind: str) -> None:
    """Atomically write ``data`` (nested dict/list/tuple/scalars/str/None/tensors) to ``path``.

    Raises:
        CheckpointError: ``data`` holds an unsupported value (the message names where), or writing
            failed; an existing file at ``path`` is then left as it was.
    """
    _check_kind(kind)
    if not isinstance(data, dict):
        raise CheckpointError(f"state file data must be a dict, got {type(data).__name__}")
    from . import __version__

    tree, tensors = encode(data, prefix=_PREFIX)
    stored, aliases = prepare_tensors(tensors)
    metadata = {
        "format": STATE_FILE_FORMAT,
        VERSION_KEY: str(STATE_FILE_VERSION),
        "kind": kind,
        "library_version": __version__,
        "data": to_json(tree),
        "aliases": to_json(aliases),
    }
    write_container(path, stored, metadata)


def read_state_file(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """Read a state file written by :func:`write_state_file` with the same ``kind``.

    Everything is checked before data is returned (format, version, kind, digest, structure); no code
    runs while loading.

    Raises:
        CheckpointError: missing, truncated, corrupted or foreign file, newer format version, other kind.
    """
    _check_kind(kind)
    header = read_header(path)
    check_format(header, STATE_FILE_FORMAT, STATE_FILE_VERSION, hint="read it with the API that wrote it")
    found = header.metadata.get("kind")
    if found != kind:
        raise CheckpointError(f"{header.path}: holds state of kind {found!r}, not {kind!r}; pass the right file")
    verify_digest(header)
    tree = from_json(header.metadata.get("data", ""), "data")
    aliases = parse_aliases(header, header.metadata.get("aliases", "{}"))
    with TensorReader(header, aliases) as reader:
        data = decode(tree, reader, prefix=_PREFIX)
    if not isinstance(data, dict):
        raise CheckpointError(f"{header.path}: stored data is a {type(data).__name__}, expected a dict")
    return data
