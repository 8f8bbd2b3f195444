"""Abstract values the propagation attaches to every fx node: where (if anywhere) a tensor's channels are.

The analysis never sees real tensors; it only knows, per graph value, which dimension carries
channels and which channel groups fill it. Ranks are known only where an op reveals them (a conv
output, a permute, a flatten), so a channel dim is stored as an index that is non-negative when the
rank is known and may be negative (counted from the end) when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Chan:
    """A tensor whose dim ``index`` holds channels: the concatenation of the groups in ``segs``.

    ``flat`` marks a channel dim produced by flattening ``C x spatial`` dims into one, so each
    channel owns a run of features of unknown length (inferred by the consuming ``Linear``).
    """

    segs: tuple[int, ...]
    index: int
    rank: int | None = None
    flat: bool = False

    def front(self) -> int | None:
        """The channel dim counted from the front, if known."""
        if self.index >= 0:
            return self.index
        return None if self.rank is None else self.index + self.rank

    def back(self) -> int | None:
        """The channel dim counted from the end (negative), if known."""
        if self.index < 0:
            return self.index
        return None if self.rank is None else self.index - self.rank

    def moved(self, index: int, rank: int | None, flat: bool | None = None) -> Chan:
        """The same channels at another position (``index`` normalised when ``rank`` is known)."""
        if rank is not None and index < 0:
            index += rank
        return Chan(self.segs, index, rank, self.flat if flat is None else flat)


@dataclass(frozen=True)
class Opaque:
    """A tensor (or anything) whose layout the analysis does not know; ``origin`` says where it came from."""

    origin: str


@dataclass(frozen=True)
class Static:
    """A non-tensor value: a literal or a Python number computed at run time (sizes, flags)."""

    value: Any = None


@dataclass(frozen=True)
class ShapeOf:
    """``x.shape`` / ``x.size()`` of a tensor value."""

    of: Value


@dataclass(frozen=True)
class SizeOf:
    """``x.size(d)`` / ``x.shape[d]``: an int computed at run time, times ``mul`` (``kv * n_rep``)."""

    of: Value
    dim: int | None
    mul: int = 1


@dataclass(frozen=True)
class Param:
    """A parameter, buffer or constant tensor of known shape (``get_attr``), or a view of one.

    ``dims[i]`` is the dim of the stored tensor that dim ``i`` of this value is (None for a dim a
    view added); None for the stored tensor itself. ``constant`` marks a traced constant (no owner).
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[int | None, ...] | None = None
    constant: bool = False

    def source_dim(self, i: int) -> int | None:
        """The stored tensor's dim that dim ``i`` (may be negative) of this value is."""
        i %= len(self.shape)
        return i if self.dims is None else self.dims[i]


@dataclass(frozen=True)
class Derived:
    """A tensor computed from parameters alone (no activation flows in), e.g. a standardised weight."""

    params: frozenset[str]


@dataclass(frozen=True)
class Tup:
    """A tuple of values of known length."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class Each:
    """A sequence of unknown length whose items all look like ``item`` (e.g. ``chunk`` results)."""

    item: Value


Value = Union[Chan, Opaque, Static, ShapeOf, SizeOf, Param, Derived, Tup, Each]


def is_dim(value: Chan, dim: int) -> bool | None:
    """Whether ``dim`` (as an op would receive it, possibly negative) is ``value``'s channel dim.

    None when it cannot be told because the rank is unknown and the two count from different ends.
    """
    if value.rank is not None:
        if not -value.rank <= dim < value.rank:
            return False
        return dim % value.rank == value.front()
    if (dim >= 0) == (value.index >= 0):
        return dim == value.index
    return None


def neg_aligned(a: Chan, b: Chan) -> bool | None:
    """Whether the channel dims of two operands of a broadcasting op line up (None: cannot tell)."""
    na, nb = a.back(), b.back()
    if na is not None and nb is not None:
        return na == nb
    if a.rank is None and b.rank is None and a.index >= 0 and b.index >= 0:
        # Same-rank tensors are the overwhelmingly common case (two feature maps of one network).
        return a.index == b.index
    return None


def walk(value: Value) -> list[Chan]:
    """Every channel-carrying value nested in ``value``."""
    if isinstance(value, Chan):
        return [value]
    if isinstance(value, Tup):
        return [c for item in value.items for c in walk(item)]
    if isinstance(value, Each):
        return walk(value.item)
    return []


def is_tensor_like(value: Value) -> bool:
    """Whether ``value`` may be a tensor (as opposed to a Python number or shape)."""
    return isinstance(value, (Chan, Opaque, Param, Derived, Tup, Each))


def param_sources(value: Value) -> frozenset[str] | None:
    """The parameters a parameter-only value is computed from; None when an activation (or anything
    of unknown origin) flows into it."""
    if isinstance(value, Param):
        return frozenset() if value.constant else frozenset({value.name})
    if isinstance(value, Derived):
        return value.params
    if isinstance(value, Tup):
        parts = [param_sources(v) for v in value.items]
        if any(p is None for p in parts):
            return None
        return frozenset().union(*(p for p in parts if p is not None))
    if isinstance(value, (Static, ShapeOf, SizeOf)):
        return frozenset()
    return None
