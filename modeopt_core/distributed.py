"""Helpers for running under ``torch.distributed`` (``torchrun``): ranks, object collectives, sharding.

Everything here works without a process group: when ``torch.distributed`` is unavailable, not
initialized or has a single member, rank is 0, world size 1, collectives return their input and
barriers return at once. With a group of two or more processes the collectives are real and, like
every ``torch.distributed`` collective, must be called by every rank in the same order.

Objects travel without pickle: :func:`broadcast_object` and :func:`all_gather_objects` encode them
with the checkpoint codec (JSON for the structure, safetensors bytes for any tensors), so they accept
what a checkpoint accepts (dicts, lists, tuples, str, int, float incl. NaN/inf, bool, None, tensors)
and nothing that would run code when received. Received tensors are on the CPU.

Backends: the bytes move as a ``uint8`` tensor on the device the backend needs: the CPU for gloo
(and for the CPU half of ``"cpu:gloo,cuda:nccl"``), ``cuda:torch.cuda.current_device()`` for nccl.
Under nccl, call ``torch.cuda.set_device(local_rank)`` before the first collective (torchrun scripts
normally do), otherwise every rank would use GPU 0.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load as _load_tensors
from safetensors.torch import save as _save_tensors
from torch import nn

from ._codec import RESERVED_PREFIX, decode, encode, from_json, to_json
from .errors import CheckpointError, ModeoptError

__all__ = [
    "DistributedError",
    "all_gather_objects",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "is_distributed",
    "is_main",
    "main_process_first",
    "only_main",
    "rank",
    "run_and_gather",
    "run_on_main",
    "shard",
    "world_size",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")
_PREFIX = RESERVED_PREFIX + "object/"
_OK, _FAILED = 0, 1  # first byte of an encoded payload


class DistributedError(ModeoptError, RuntimeError):
    """A collective could not complete: another rank failed, or ranks disagree on what they run.

    ``rank`` is the rank that failed (None when the problem is a disagreement between ranks).
    """

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


# --------------------------------------------------------------------------- rank queries
def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with two or more processes is initialized."""
    return _group_ready() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if _group_ready() else 0


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return dist.get_world_size() if _group_ready() else 1


def is_main() -> bool:
    """Whether this is rank 0 (always True without a process group)."""
    return rank() == 0


def _device() -> torch.device:
    """The device collectives on this group's default backend need for their tensors."""
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank reaches this point (no-op without a process group)."""
    if not is_distributed():
        return
    device = _device()
    if device.type == "cuda":  # tells nccl which GPU this rank uses instead of letting it guess
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def shard(items: Iterable[_T]) -> list[_T]:
    """This rank's share of ``items``: every ``world_size()``-th item starting at ``rank()``.

    The shares of all ranks are disjoint, cover ``items`` and keep its order; without a process
    group the whole list is returned.
    """
    return list(items)[rank() :: world_size()]


# --------------------------------------------------------------------------- object encoding
def _encode(obj: Any) -> bytes:
    try:
        tree, tensors = encode(obj, prefix=_PREFIX)
    except CheckpointError as exc:
        raise DistributedError(f"cannot send this object to other ranks: {exc}") from None
    header = to_json(tree).encode("utf-8")
    blob = _save_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}) if tensors else b""
    return bytes([_OK]) + struct.pack("<Q", len(header)) + header + blob


def _encode_failure(message: str) -> bytes:
    return bytes([_FAILED]) + message.encode("utf-8", errors="replace")


def _decode(payload: bytes, source: int) -> Any:
    if payload[:1] == bytes([_FAILED]):
        raise DistributedError(f"rank {source} failed: {payload[1:].decode('utf-8', errors='replace')}", source)
    (size,) = struct.unpack("<Q", payload[1:9])
    tree = from_json(payload[9 : 9 + size].decode("utf-8"), "object")
    rest = payload[9 + size :]
    tensors = _load_tensors(rest) if rest else {}
    return decode(tree, tensors, prefix=_PREFIX)


def _as_tensor(payload: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)


def _payload(obj: Any) -> tuple[bytes, DistributedError | None]:
    try:
        return _encode(obj), None
    except DistributedError as exc:
        return _encode_failure(str(exc)), exc


# --------------------------------------------------------------------------- collectives
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``src`` gets its own object back).

    Raises:
        DistributedError: ``obj`` holds a type that cannot be sent (raised on every rank).
    """
    if not is_distributed():
        return obj
    device = _device()
    error: DistributedError | None = None
    if rank() == src:
        payload, error = _payload(obj)
        size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buffer = _as_tensor(payload, device) if rank() == src else torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src)
    if rank() == src:
        if error is not None:
            raise error
        return obj
    return _decode(buffer.cpu().numpy().tobytes(), src)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank, on every rank (this rank's entry is ``obj`` itself).

    Raises:
        DistributedError: some rank's object cannot be sent (raised on every rank, naming it).
    """
    if not is_distributed():
        return [obj]
    device = _device()
    payload, error = _payload(obj)
    n = world_size()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(n)]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: len(payload)] = _as_tensor(payload, device)
    buffers = [torch.empty(max(lengths), dtype=torch.uint8, device=device) for _ in range(n)]
    dist.all_gather(buffers, padded)
    if error is not None:
        raise error
    me = rank()
    return [obj if r == me else _decode(buf[:length].cpu().numpy().tobytes(), r) for r, (buf, length) in
            enumerate(zip(buffers, lengths))]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_and_gather(fn: Callable[[], _T]) -> list[_T]:
    """Call ``fn()`` on every rank and return all results, indexed by rank, on every rank.

    If ``fn`` raises on any rank, every rank raises: the failing rank its own exception, the others a
    :class:`DistributedError` naming that rank and its error (so no rank waits forever for a result).
    """
    error: Exception | None = None
    try:
        outcome: dict[str, Any] = {"ok": True, "value": fn()}
    except Exception as exc:
        error = exc
        outcome = {"ok": False, "error": _describe(exc)}
    if not is_distributed():
        if error is not None:
            raise error
        return [outcome["value"]]
    try:
        gathered = all_gather_objects(outcome)
    except DistributedError:
        if error is not None:
            raise error from None
        raise
    if error is not None:
        raise error
    failed = [(r, o["error"]) for r, o in enumerate(gathered) if not o["ok"]]
    if failed:
        r, message = failed[0]
        raise DistributedError(f"rank {r} failed: {message}", r)
    return [o["value"] for o in gathered]


def run_on_main(fn: Callable[[], _T]) -> _T:
    """Call ``fn()`` on rank 0 only and return its result on every rank (an implicit barrier).

    If ``fn`` raises on rank 0, rank 0 raises it and every other rank raises :class:`DistributedError`.
    """
    if not is_distributed():
        return fn()
    error: Exception | None = None
    outcome: dict[str, Any] = {}
    if is_main():
        try:
            outcome = {"ok": True, "value": fn()}
        except Exception as exc:
            error = exc
            outcome = {"ok": False, "error": _describe(exc)}
    try:
        received = broadcast_object(outcome, src=0)
    except DistributedError:
        if error is not None:
            raise error from None
        raise
    if error is not None:
        raise error
    if not received["ok"]:
        raise DistributedError(f"rank 0 failed: {received['error']}", 0)
    return received["value"]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. batch-norm statistics) of ``module`` into every rank's module."""
    if not is_distributed():
        return
    device = _device()
    for buffer in module.buffers():
        if buffer.device == device:
            dist.broadcast(buffer, src)
        else:  # e.g. CPU buffers under nccl: go through the backend's device
            staged = buffer.detach().to(device)
            dist.broadcast(staged, src)
            with torch.no_grad():
                buffer.copy_(staged)


# --------------------------------------------------------------------------- rank-0 work
@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks run it once rank 0 has finished it.

    For work whose result the others then reuse (download, preprocess, write a cache file). Every
    rank must enter the block. Without a process group it simply runs the block.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def only_main(fn: Callable[_P, _T]) -> Callable[_P, _T | None]:
    """Decorator: the function runs on rank 0 only and returns None on the other ranks (no barrier)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper
