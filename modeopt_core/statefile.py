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

from ._args import require_path
from ._codec import RESERVED_PREFIX, decode, encode, from_json, to_json
from ._container import VERSION_KEY, bad, check_format, parse_aliases, prepare_tensors
from ._reader import ContainerFile
from ._writer import write_container
from .errors import CheckpointError

__all__ = ["STATE_FILE_FORMAT", "STATE_FILE_VERSION", "read_state_file", "write_state_file"]

STATE_FILE_FORMAT = "modeopt-state"
STATE_FILE_VERSION = 1
_PREFIX = RESERVED_PREFIX + "data/"


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind or kind != kind.strip():
        raise CheckpointError(f"kind must be a non-empty string without surrounding spaces, got {kind!r}")


def write_state_file(path: str | os.PathLike[str], data: dict[str, Any], *, kind: str, durable: bool = False) -> None:
    """Atomically write ``data`` (nested dict/list/tuple/scalars/str/None/tensors) to ``path``.

    ``durable``: flush to the disk before returning (see :func:`modeopt_core.save`).

    Raises:
        CheckpointError: ``data`` holds an unsupported value (the message names where), or writing
            failed; an existing file at ``path`` is then left as it was.
    """
    _check_kind(kind)
    text = require_path(path, "write_state_file")
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
    write_container(text, stored, metadata, durable=durable)


def read_state_file(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """Read a state file written by :func:`write_state_file` with the same ``kind``.

    Everything is checked before data is returned (format, version, kind, digest, structure), and
    everything is read from one open file; no code runs while loading.

    Raises:
        CheckpointError: missing, truncated, corrupted or foreign file, newer format version, other kind.
    """
    _check_kind(kind)
    text = require_path(path, "read_state_file")
    with ContainerFile(text) as f:
        header = f.header
        check_format(header, STATE_FILE_FORMAT, STATE_FILE_VERSION, hint="read it with the API that wrote it")
        found = header.metadata.get("kind")
        if found != kind:
            shown = found if found is None or len(found) <= 80 else found[:77] + "..."
            raise bad(header.path, f"holds state of kind {shown!r}, not {kind!r}; pass the right file")
        f.verify_digest()
        try:
            tree = from_json(header.metadata.get("data", ""), "data")
            aliases = parse_aliases(header, header.metadata.get("aliases", "{}"))
            data = decode(tree, f.reader(aliases, own=True), prefix=_PREFIX)
        except CheckpointError as exc:
            raise exc if str(exc).startswith(str(header.path)) else bad(header.path, str(exc)) from None
    if not isinstance(data, dict):
        raise bad(header.path, f"stored data is a {type(data).__name__}, expected a dict")
    return data
