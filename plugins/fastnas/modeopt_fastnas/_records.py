"""The pieces of a downstream-only evaluation record: module calls, copies of outputs, the touch guard.

Private to :mod:`modeopt_fastnas.downstream` (see its module doc for how they fit together).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "PrefixEnd",
    "Record",
    "RecordedCall",
    "TouchGuard",
    "Uncacheable",
    "clone_output",
    "output_nbytes",
    "output_versions",
    "storage_id",
]


class PrefixEnd(Exception):
    """Raised inside a recording forward where the group's computation starts."""


class Uncacheable(Exception):
    """The group cannot be evaluated from a record (reason in the message)."""


@dataclass
class RecordedCall:
    """One finished module call of a recording forward: its output, and what it touched."""

    module: nn.Module
    output: Any = None
    children: list[RecordedCall] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # group ids whose tensors an op inside this call read
    nbytes: int = 0
    versions: list[int] = field(default_factory=list)  # version counters of the output when it was returned


@dataclass
class Record:
    """The prefix of one group: per mode, per batch, the maximal finished calls in order."""

    gid: int
    calls: dict[str, list[list[RecordedCall]]]
    touched: set[int]
    prefix_bns: set[nn.Module]
    nbytes: int
    position: int  # module calls in the prefix of the first score batch (how far the prefix reaches)


def clone_output(value: Any, copy: bool = True) -> Any:
    """A copy of a module output (tensors cloned, containers rebuilt); ``copy=False`` only checks that
    it can be copied. Raises ``Uncacheable`` for outputs of other types."""
    if isinstance(value, torch.Tensor):
        return value.clone() if copy else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(clone_output(v, copy) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(clone_output(v, copy) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: clone_output(v, copy) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise Uncacheable(f"a module returned a {type(value).__name__}, which the record cannot copy")


def output_versions(value: Any) -> list[int]:
    return [t._version for t in _tensors(value)]


def output_nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(output_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(output_nbytes(v) for v in value.values())
    return 0


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def storage_id(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage (sparse, nested, ...)
        return -1


class TouchGuard(TorchDispatchMode):
    """Calls ``on_touch(group ids)`` for every op reading a tensor bound to a channel group."""

    def __init__(self, storages: dict[int, frozenset[int]], on_touch: Callable[[frozenset[int]], None]) -> None:
        super().__init__()
        self.storages, self.on_touch = storages, on_touch

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for t in _tensors((args, kwargs or {})):
            groups = self.storages.get(storage_id(t))
            if groups:
                self.on_touch(groups)
        return func(*args, **(kwargs or {}))
