"""Reading a container: header, digest and tensors all come from one memory map of one open file.

Why one mapping: a file opened once is one inode, so a writer that replaces the path meanwhile (by
renaming a new file over it, as modeopt's writer does) cannot mix its bytes into what is read; the
reader sees exactly the file it opened, complete. A writer that modifies the file *in place* is
detected by comparing ``fstat`` before and after (size, inode, modification and change times).

Tensors are zero-copy views of the mapping (the pages are page cache, not private memory), built
from a ``memoryview`` slice so that the mapping cannot be closed under a live view: closing is then
left to the garbage collector.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from ._container import (
    DIGEST_KEY,
    Header,
    bad,
    digest_algorithm,
    feed_digest,
    new_digest,
    parse_header,
    same_file_identity,
    torch_dtype,
)
from .errors import CheckpointError

__all__ = ["ContainerFile", "read_header"]


def _open(p: Path) -> int:
    try:
        return os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise bad(p, "no such file") from None
    except IsADirectoryError:
        raise bad(p, "not a regular file") from None
    except OSError as exc:
        raise bad(p, f"cannot open it: {exc.strerror or exc}") from None


class ContainerFile:
    """One checkpoint file, opened once and mapped once (a context manager).

    Raises:
        CheckpointError: missing, not a regular file, unreadable, truncated or not a safetensors file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(path))
        self._fd = _open(self.path)
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        try:
            self._stat = os.fstat(self._fd)
            if not stat.S_ISREG(self._stat.st_mode):
                raise bad(self.path, "not a regular file")
            size = self._stat.st_size
            if size >= 8:
                # Private (copy-on-write) so the views are writable for torch.frombuffer; nothing
                # writes to them, so no page is ever copied.
                self._mm = mmap.mmap(self._fd, size, access=mmap.ACCESS_COPY)
                self._view = memoryview(self._mm)
            self.check_unchanged()
            view = self._view
            self.header: Header = parse_header(
                self.path, bytes(view[:8]) if view is not None else b"", size,
                lambda a, b: bytes(view[a:b]) if view is not None else b"",
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ContainerFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the mapping (once no tensor view of it is alive) and the descriptor."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a tensor view outlives the reader: the mapping goes with it
                pass
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def check_unchanged(self) -> None:
        """Raise if the open file was modified in place since it was opened."""
        if self._fd < 0 or not same_file_identity(self._stat, os.fstat(self._fd)):
            raise bad(self.path, "the file changed while being read (something modified it in place instead "
                                 "of replacing it atomically); read it again once the writer is done")

    def _bytes(self, start: int, end: int) -> memoryview:
        if self._view is None:
            raise CheckpointError(f"{self.path}: read after close")
        return self._view[start:end]

    def verify_digest(self) -> None:
        """Recompute the content digest from the mapping and compare it with the stored one."""
        header = self.header
        algo = digest_algorithm(header)
        h = new_digest(header.metadata, algo)
        feed_digest(h, ((n, e.dtype, e.shape, self._bytes(e.start, e.end))
                        for n, e in sorted(header.tensors.items())))
        if f"{algo}:{h.hexdigest()}" != header.metadata[DIGEST_KEY]:
            raise bad(self.path, "content digest mismatch: the file is corrupted or was modified after saving")
        self.check_unchanged()

    def tensor(self, name: str) -> torch.Tensor:
        """A zero-copy view of stored tensor ``name`` (KeyError if not stored); do not write to it."""
        entry = self.header.tensors[name]
        dtype = torch_dtype(entry.dtype)
        if entry.end == entry.start:
            return torch.empty(entry.shape, dtype=dtype)
        return torch.frombuffer(self._bytes(entry.start, entry.end), dtype=dtype).reshape(entry.shape)

    def reader(self, aliases: Mapping[str, str], *, own: bool = False) -> Callable[[str], torch.Tensor]:
        """``fetch(name)``: the tensor stored under ``name`` or under the name it aliases (KeyError if
        neither); ``own=True`` returns copies that outlive the file (for decoded state)."""

        def fetch(name: str) -> torch.Tensor:
            stored = aliases.get(name, name)
            if stored not in self.header.tensors:
                raise KeyError(name)
            tensor = self.tensor(stored)
            return tensor.clone() if own else tensor

        return fetch


def read_header(path: str | os.PathLike[str]) -> Header:
    """The parsed header of ``path`` (the file is opened, parsed and closed)."""
    with ContainerFile(path) as f:
        return f.header
