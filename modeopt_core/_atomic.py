"""Atomic file replacement through a locked temporary file, and removal of temporaries left by killed writers.

A writer creates ``.<name>.XXXXXXXX.tmp`` next to the target, takes an exclusive ``flock`` on it,
writes, renames it over the target and only then closes it (releasing the lock). Readers of the
target therefore see the old file or the complete new one, never a partial write. A writer killed
outright leaves its temporary behind, unlocked (the kernel drops a dead process's locks): the next
write to the same target removes every temporary of exactly that naming whose lock it can take,
which a live writer's never is.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no clean-up of strays
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_fd", "atomic_write_bytes", "remove_stale_temporaries", "temporary_pattern", "write_all"]

_TMP_SUFFIX = ".tmp"
_CREATE_ATTEMPTS = 100
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
#: replaced files at least this large are unlinked by a background thread (freeing ~0.8 ms/MB here)
_BACKGROUND_UNLINK_BYTES = 16 << 20


def temporary_pattern(target: Path) -> re.Pattern[str]:
    """The names of the temporaries a write to ``target`` creates (``tempfile.mkstemp``'s 8 characters)."""
    return re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}" + re.escape(_TMP_SUFFIX))


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some platforms (Windows) cannot open directories.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _locked_temporary(target: Path, directory: Path) -> tuple[int, Path]:
    for _ in range(_CREATE_ATTEMPTS):
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX, dir=directory)
        if fcntl is None:
            return fd, Path(name)
        # Blocks only if a clean-up took the lock in the instant between creation and here; it then
        # removed the file, which the link count shows: start over with a new one.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, Path(name)
        os.close(fd)
    raise OSError(f"could not create a temporary file next to {target}")


def _keep_replaced(target: Path, directory: Path) -> Path | None:
    """A hard link to the large file about to be replaced, under a temporary's name (None if not worth it).

    Why: the rename then drops only a link, and freeing the old file's pages and blocks, which costs
    as much as a good part of the write, happens after the save returned (:func:`_discard_later`).
    """
    try:
        info = os.lstat(target)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size < _BACKGROUND_UNLINK_BYTES or info.st_nlink != 1:
        return None
    for _ in range(_CREATE_ATTEMPTS):
        name = directory / f".{target.name}.{''.join(secrets.choice(_NAME_CHARS) for _ in range(8))}{_TMP_SUFFIX}"
        try:
            os.link(target, name)
            return name
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network or FAT file systems): replace directly
            return None
    return None


def _discard_later(path: Path) -> None:
    # Not a daemon: interpreter exit waits for it, so no stray copy is left behind by a normal exit.
    threading.Thread(target=_unlink_quietly, args=(path,), name="modeopt-unlink-replaced").start()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # a concurrent writer's clean-up may have removed it already
        path.unlink()


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of writes to ``target`` that no live writer holds; return what was removed."""
    if fcntl is None:
        return []
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    pattern = temporary_pattern(target)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(directory) if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue  # gone (renamed into place or removed), a link, or unreadable: not ours to judge
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            try:
                now = os.lstat(entry.path)
            except OSError:
                continue
            if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):  # not renamed into place meanwhile
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_fd(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[int]:
    """Yield a descriptor of a locked temporary file next to ``path``; on success rename it to ``path``.

    Stale temporaries of earlier, killed writes to ``path`` are removed first. On any exception the
    temporary is removed and ``path`` is untouched. ``durable``: ``fsync`` the file before the
    rename and the directory after it, so that the new file also survives a power loss.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    remove_stale_temporaries(target)
    fd, tmp = _locked_temporary(target, directory)
    replaced: Path | None = None
    try:
        try:
            yield fd
            if durable:
                os.fsync(fd)
            # mkstemp creates 0600 files: keep the permissions of the file being replaced, else 0644.
            try:
                mode = stat.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o644
            os.fchmod(fd, mode)
            replaced = _keep_replaced(target, directory)
            try:
                os.replace(tmp, target)
            except BaseException:
                if replaced is not None:
                    _unlink_quietly(replaced)
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()  # while still locked: a clean-up never races a live writer
            raise
    finally:
        os.close(fd)  # after the rename: releases the lock
    if durable:
        _fsync_dir(directory)
    if replaced is not None:
        _discard_later(replaced)


def write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    while view.nbytes:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (locked temporary file, write, rename)."""
    with atomic_fd(path, durable=durable) as fd:
        write_all(fd, data)
