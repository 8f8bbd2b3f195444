"""Files written by rank 0 under ``torch.distributed``, without a collective: rank 0 never waits.

``if rank == 0: save(...)`` is the idiom every PyTorch user writes, and so is calling ``save`` on
every rank; both must work, and a call that only some other rank makes must fail fast instead of
hanging. So rank 0 writes and publishes its progress in the process group's key-value store
(``begin`` and ``end`` keys per write, point-to-point with the store, no collective); another rank
writes nothing and waits on those keys:

- the *n*-th call for a path on a rank pairs with rank 0's *n*-th write of that path;
- it waits :data:`SAVE_TIMEOUT_ENV` seconds (default 30) for rank 0 to *begin* that write, then as
  long as the write takes (up to the store's timeout), and raises rank 0's error if it failed.

Without a process group (or with one process) the write simply runs.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from typing import Any

from . import distributed
from .distributed import DistributedError

__all__ = ["DEFAULT_SAVE_TIMEOUT_S", "SAVE_TIMEOUT_ENV", "write_on_main"]

SAVE_TIMEOUT_ENV = "MODEOPT_SAVE_TIMEOUT_S"
DEFAULT_SAVE_TIMEOUT_S = 30.0
_counts: dict[tuple[int, str], int] = {}  # (process group, path) -> writes so far


def _store() -> Any:
    try:
        from torch.distributed.distributed_c10d import _get_default_group, _get_default_store

        return id(_get_default_group()), _get_default_store()
    except (ImportError, AttributeError, ValueError, RuntimeError):
        return None


def _timeout() -> float:
    raw = os.environ.get(SAVE_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_SAVE_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{SAVE_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return value if value > 0 else DEFAULT_SAVE_TIMEOUT_S


def write_on_main(path: str, write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0; on other ranks wait for rank 0's matching write of ``path`` (see module doc)."""
    if not distributed.is_distributed():
        write()
        return
    found = _store()
    if found is None:  # no reachable store (an exotic launcher): fall back to a collective
        distributed.run_on_main(write)
        return
    group, store = found
    n = _counts[(group, path)] = _counts.get((group, path), 0) + 1
    key = f"modeopt/write/{hashlib.sha256(path.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}/{n}"
    if distributed.is_main():
        store.set(key + "/begin", "1")
        try:
            write()
        except BaseException as exc:  # also KeyboardInterrupt: the waiting ranks must not wait forever
            store.set(key + "/end", f"{type(exc).__name__}: {exc}")
            raise
        store.set(key + "/end", "")
        return
    me, timeout = distributed.rank(), _timeout()
    try:
        store.wait([key + "/begin"], datetime.timedelta(seconds=timeout))
    except RuntimeError as exc:  # DistStoreError on timeout
        raise DistributedError(
            f"save({path!r}) was called on rank {me} (its call #{n} for this path), but rank 0 did not begin "
            f"saving that path within {timeout:g} s. Call save on rank 0 only (`if rank == 0: save(...)`, the "
            f"other ranks need not call it) or on every rank with the same path; if rank 0 reaches save later "
            f"than the others, raise {SAVE_TIMEOUT_ENV}"
        ) from exc
    store.wait([key + "/end"])
    error = store.get(key + "/end").decode("utf-8", errors="replace")
    if error:
        raise DistributedError(f"rank 0 failed: {error}", 0)
