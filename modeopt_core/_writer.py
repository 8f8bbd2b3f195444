"""Writing a container in one sequential pass: header, then every tensor's bytes, digest hashed alongside.

Why not ``safetensors.torch.save_file``: it copies every tensor into a ``bytes`` object first, and the
digest (which lives in the header, before the data) would need a second pass over the tensors. Here
the header is written with a placeholder of the digest's exact length; the tensors' bytes go to the
file straight from their memory; a second thread hashes the same memory meanwhile (``hashlib``
releases the GIL), and the finished digest overwrites the placeholder before the file is renamed
into place. The result is an ordinary safetensors file (``safetensors.safe_open`` reads it).

Data order: tensors of larger elements first, then by name, so every tensor starts at a multiple of
its element size (the header is padded with spaces to a multiple of 8 bytes, as safetensors does).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import _atomic, _container
from ._container import (
    DIGEST_KEY,
    digest_placeholder,
    dtype_code,
    feed_digest,
    new_digest,
    tensor_bytes,
    written_algorithm,
)
from .errors import CheckpointError

__all__ = ["check_target", "write_container"]

#: below this many tensor bytes the digest is computed inline (a thread would cost more than it saves)
_THREAD_MIN_BYTES = 4 << 20


def check_target(path: Any) -> Path:
    """``path`` as a Path after checking it can name a file to write (type, empty, directory)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint path must be a str or os.PathLike, got {type(path).__name__}: {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"a checkpoint path must name a file, got {text!r}; pass e.g. 'model.safetensors'")
    target = Path(text)
    if target.is_dir():
        raise CheckpointError(f"cannot write {target}: it is a directory; pass a file path inside it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {target}: directory {parent} does not exist")
    return target


class _Digest:
    """The content digest of ``tensors`` and ``metadata``, computed in a thread for large data."""

    def __init__(self, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor], algo: str) -> None:
        self._algo = algo
        self._hash = new_digest(metadata, algo)
        self._items = [(n, dtype_code(t.dtype), tuple(t.shape), tensor_bytes(t)) for n, t in sorted(tensors.items())]
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if sum(item[3].nbytes for item in self._items) >= _THREAD_MIN_BYTES:
            self._thread = threading.Thread(target=self._run, name="modeopt-digest", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            feed_digest(self._hash, self._items)
        except BaseException as exc:  # handed to the writing thread by result()
            self._error = exc

    def result(self) -> str:
        """Wait for the hash; the digest string ``algo:hex``."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return f"{self._algo}:{self._hash.hexdigest()}"


def _header(tensors: Mapping[str, torch.Tensor], order: list[str], metadata: Mapping[str, str],
            placeholder: str) -> tuple[bytes, int]:
    """The padded header bytes (with the digest placeholder last in ``__metadata__``) and the digest's offset."""
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        entries[name] = {"dtype": dtype_code(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    # ASCII-only JSON: any string (even a lone surrogate) round-trips, and offsets are character offsets.
    body = json.dumps(entries, separators=(",", ":"))[:-1]
    meta = json.dumps(dict(metadata), separators=(",", ":"))[:-1]
    text = body + ("," if entries else "") + '"__metadata__":' + meta + ("," if metadata else "") + f'"{DIGEST_KEY}":"'
    at = 8 + len(text)
    text += placeholder + '"}}'
    text += " " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text.encode("ascii"), at


def _size_check(header: bytes, metadata: Mapping[str, str]) -> None:
    limit = _container.MAX_HEADER_BYTES
    if len(header) > limit:
        biggest = max(metadata, key=lambda k: len(metadata[k]))
        raise CheckpointError(
            f"checkpoint header would be ~{len(header) / 1e6:.0f} MB (limit {limit / 1e6:.0f} MB), mostly "
            f"{biggest!r}: keep large numeric state in tensors, not in Python lists/dicts"
        )


def _write_body(fd: int, header: bytes, tensors: Mapping[str, torch.Tensor], order: list[str]) -> None:
    """The one sequential pass: header, then each tensor's bytes from its own memory."""
    _atomic.write_all(fd, header)
    for name in order:
        data = tensor_bytes(tensors[name])
        if data.nbytes:
            _atomic.write_all(fd, data)


def write_container(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                    *, durable: bool = False) -> None:
    """Atomically write prepared tensors (see :func:`~._container.prepare_tensors`) and metadata, adding the digest.

    Raises:
        CheckpointError: bad path, header too large, or the file cannot be written; an existing
            ``path`` is then left as it was.
    """
    target = check_target(path)
    metadata = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    if "__metadata__" in tensors:
        raise CheckpointError("a tensor may not be named '__metadata__' (safetensors reserves it); rename it")
    algo = written_algorithm()
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header, digest_at = _header(tensors, order, metadata, digest_placeholder(algo))
    _size_check(header, metadata)
    digest = _Digest(metadata, tensors, algo)
    try:
        with _atomic.atomic_fd(target, durable=durable) as fd:
            try:
                _write_body(fd, header, tensors, order)
            finally:
                final = digest.result()  # joins the hashing thread, also when the write failed
            os.pwrite(fd, final.encode("ascii"), digest_at)
    except OSError as exc:
        raise CheckpointError(f"cannot write {target}: {exc.strerror or exc}") from exc
