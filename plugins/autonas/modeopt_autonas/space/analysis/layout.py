"""Layout ops: where the channel dim of a tensor goes through flatten/view/permute/indexing/....

Every function takes the input value(s) plus the op's literal arguments and returns the output
value. When an op would cut, merge or re-slice the channel dim in a way a binding cannot express,
the input's groups are frozen through ``freeze`` and the output is :class:`Opaque`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .values import Chan, Derived, Each, Opaque, SizeOf, Static, Value, is_dim, neg_aligned, param_sources

__all__ = [
    "cat",
    "expand",
    "flatten",
    "getitem",
    "pad",
    "permute",
    "reduce",
    "spatial",
    "split",
    "squeeze",
    "transpose",
    "unsqueeze",
    "view",
]

Freeze = Callable[[Value, str], None]


def _fail(freeze: Freeze, x: Value, reason: str, op: str) -> Opaque:
    freeze(x, reason)
    return Opaque(f"output of {op}")


def _literal_int(v: Value | Any) -> int | None:
    if isinstance(v, Static) and isinstance(v.value, int) and not isinstance(v.value, bool):
        return v.value
    return None


def _non_chan(x: Value, op: str) -> Value:
    """What a layout op makes of a value without channels (a view of parameters stays parameter-only)."""
    if isinstance(x, Static):
        return x
    sources = param_sources(x)
    return Derived(sources) if sources else Opaque(f"output of {op}")


def spatial(freeze: Freeze, x: Value, nd: int | None, op: str) -> Value:
    """Pooling/upsampling over the trailing ``nd`` dims (None: all dims after N and C)."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    if x.flat:
        return _fail(freeze, x, f"flows into torch.flatten (channels x spatial) consumed by {op}", op)
    if nd is None and x.rank is not None:
        nd = x.rank - 2
    back = x.back()
    if nd is not None and back is not None:
        ok: bool | None = -back > nd
    else:
        ok = True if x.front() == 1 else None  # an (N, C, ...) map: the usual layout for these ops
    if ok:
        return x
    why = f"{op} acts on the channel dim" if ok is False else f"cannot tell whether {op} acts on the channel dim"
    return _fail(freeze, x, why, op)


def pad(freeze: Freeze, x: Value, pads: Sequence[Value | Any], op: str) -> Value:
    """Padding of the trailing ``len(pads) // 2`` dims; the channel dim must get zero padding."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    back = x.back()
    if back is None:
        return _fail(freeze, x, f"cannot tell whether {op} pads the channel dim", op)
    k = len(pads) // 2
    if -back > k:
        return x
    pair = pads[2 * (-back - 1) : 2 * (-back - 1) + 2]
    if all(_literal_int(p) == 0 or p == 0 for p in pair):
        return x
    return _fail(freeze, x, f"{op} pads the channel dim", op)


def flatten(freeze: Freeze, x: Value, start: int, end: int, op: str) -> Value:
    """``torch.flatten``: only flattening from the channel dim to the end keeps the channels."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    r, f = x.rank, x.front()
    if r is None:
        if f is None or start < 0 or end != -1:
            return _fail(freeze, x, f"cannot tell where {op} puts the channel dim (unknown rank)", op)
        if f < start:
            return Chan(x.segs, f, None, x.flat)
        if f == start:
            return Chan(x.segs, f, f + 1, flat=True)
        return _fail(freeze, x, f"channel dim flattened together with leading dims by {op}", op)
    if not (-r <= start < r and -r <= end < r):
        return _fail(freeze, x, f"{op} uses dims outside the tensor's rank {r}", op)
    s, e = start % r, end % r
    assert f is not None  # rank known
    if s >= e:
        return x
    if f < s:
        return Chan(x.segs, f, r - (e - s), x.flat)
    if f > e:
        return Chan(x.segs, f - (e - s), r - (e - s), x.flat)
    if f == s and e == r - 1:
        return Chan(x.segs, s, s + 1, flat=True)
    return _fail(freeze, x, f"channel dim flattened together with other dims by {op}", op)


def view(freeze: Freeze, x: Value, shape: Sequence[Value], op: str) -> Value:
    """``view``/``reshape``: only ``(N, -1)`` (flatten from dim 1) and ``(N, C, 1, ..., 1)`` are understood."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    n, f = len(shape), x.front()
    first_is_batch = isinstance(shape[0], SizeOf) and shape[0].dim == 0 if shape else False
    if n == 2 and f == 1:
        second = _literal_int(shape[1])
        if second == -1 or (first_is_batch and second is None and not isinstance(shape[1], Static)):
            return x if x.rank == 2 else Chan(x.segs, 1, 2, flat=True)
    if n >= 3 and f == 1 and x.rank in (2, None) and not x.flat:
        second = _literal_int(shape[1])
        if (second == -1 or (second is None and not isinstance(shape[1], Static))) and all(
            _literal_int(s) == 1 for s in shape[2:]
        ):
            return Chan(x.segs, 1, n)
    return _fail(freeze, x, f"reshaped by {op} (only flattening from the channel dim is understood)", op)


def permute(freeze: Freeze, x: Value, dims: Sequence[Value | Any], op: str) -> Value:
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    lits = [d if isinstance(d, int) else _literal_int(d) for d in dims]
    r = len(lits)
    if any(d is None for d in lits) or (x.rank is not None and x.rank != r):
        return _fail(freeze, x, f"cannot follow the channel dim through {op}", op)
    norm = [d % r for d in lits if d is not None]
    f = x.index if x.index >= 0 else x.index + r
    if sorted(norm) != list(range(r)) or not 0 <= f < r:
        return _fail(freeze, x, f"cannot follow the channel dim through {op}", op)
    new = norm.index(f)
    if x.flat and new != r - 1:
        return _fail(freeze, x, f"flows into torch.flatten (channels x spatial) consumed by {op}", op)
    return Chan(x.segs, new, r, x.flat)


def transpose(freeze: Freeze, x: Value, d0: Any, d1: Any, op: str) -> Value:
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    a, b = _literal_int(d0) if not isinstance(d0, int) else d0, _literal_int(d1) if not isinstance(d1, int) else d1
    if a is None or b is None:
        return _fail(freeze, x, f"cannot follow the channel dim through {op}", op)
    on_a, on_b = is_dim(x, a), is_dim(x, b)
    if on_a is None or on_b is None:
        return _fail(freeze, x, f"cannot tell whether {op} moves the channel dim (unknown rank)", op)
    if not on_a and not on_b:
        return x
    moved = x.moved(b if on_a else a, x.rank)
    if x.flat:
        return _fail(freeze, x, f"flows into torch.flatten (channels x spatial) consumed by {op}", op)
    return moved


def unsqueeze(freeze: Freeze, x: Value, d: int, op: str) -> Value:
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    if x.rank is not None:
        r, f = x.rank, x.front()
        p = d if d >= 0 else d + r + 1
        assert f is not None
        return Chan(x.segs, f + (1 if p <= f else 0), r + 1, x.flat)
    if d >= 0 and x.index >= 0:
        return Chan(x.segs, x.index + (1 if d <= x.index else 0), None, x.flat)
    if d < 0 and x.index < 0:
        return Chan(x.segs, x.index if d < x.index else x.index - 1, None, x.flat)
    return _fail(freeze, x, f"cannot tell where {op} puts the channel dim (unknown rank)", op)


def _drop_dim(freeze: Freeze, x: Chan, d: int, op: str) -> Value:
    """``x`` without dim ``d`` (which is not the channel dim)."""
    if x.rank is not None:
        f = x.front()
        assert f is not None
        return Chan(x.segs, f - (1 if d % x.rank < f else 0), x.rank - 1, x.flat)
    if d >= 0 and x.index >= 0:
        return Chan(x.segs, x.index - (1 if d < x.index else 0), None, x.flat)
    if d < 0 and x.index < 0:
        return Chan(x.segs, x.index + (1 if d > x.index else 0), None, x.flat)
    return _fail(freeze, x, f"cannot tell where {op} puts the channel dim (unknown rank)", op)


def squeeze(freeze: Freeze, x: Value, d: int | None, op: str) -> Value:
    """``squeeze(d)`` is assumed to remove dim ``d`` (the reason to call it is that it has size 1)."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    if d is None:
        return _fail(freeze, x, f"cannot tell which dims {op} removes", op)
    on = is_dim(x, d)
    if on is None:
        return _fail(freeze, x, f"cannot tell whether {op} removes the channel dim (unknown rank)", op)
    if on:
        return _fail(freeze, x, f"{op} removes the channel dim", op)
    return _drop_dim(freeze, x, d, op)


def reduce(freeze: Freeze, x: Value, dims: Sequence[int] | None, keepdim: bool, op: str) -> Value:
    """``mean``/``sum``/``amax``/``amin`` over ``dims``; reducing the channels leaves no channel dim."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    if dims is None:
        return Opaque(f"output of {op} (all dims reduced)")
    on = [is_dim(x, d) for d in dims]
    if any(o is None for o in on):
        return _fail(freeze, x, f"cannot tell whether {op} reduces the channel dim (unknown rank)", op)
    if any(on):
        return Opaque(f"output of {op} (channels reduced)")  # width-independent: no constraint
    if keepdim:
        return x
    out: Value = x
    for d in sorted(dims, key=lambda d: d % x.rank if x.rank else d, reverse=True):
        if not isinstance(out, Chan):
            break
        out = _drop_dim(freeze, out, d, op) if x.rank is None else _drop_sorted(out, d % x.rank)
    return out


def _drop_sorted(x: Chan, p: int) -> Chan:
    f = x.front()
    assert f is not None and x.rank is not None
    return Chan(x.segs, f - (1 if p < f else 0), x.rank - 1, x.flat)


def split(freeze: Freeze, x: Value, dim: int, op: str, *, removes_dim: bool = False) -> Value:
    """``chunk``/``split``/``unbind`` along ``dim``: pieces of the channel dim cannot be tracked."""
    if not isinstance(x, Chan):
        return Each(_non_chan(x, op))
    on = is_dim(x, dim)
    if on is None:
        return Each(_fail(freeze, x, f"cannot tell whether {op} splits the channel dim (unknown rank)", op))
    if on:
        return Each(_fail(freeze, x, f"split along the channel dim by {op}", op))
    return Each(_drop_dim(freeze, x, dim, op) if removes_dim else x)


def cat(freeze: Freeze, tie: Callable[[Chan, Chan, str], None], parts: Sequence[Value], dim: int, op: str) -> Value:
    """``torch.cat``: along the channel dim the parts become consecutive segments (nested cats flatten)."""
    chans = [p for p in parts if isinstance(p, Chan)]
    if not parts:
        return Opaque(f"output of {op}")
    if len(chans) != len(parts):
        other = next(p for p in parts if not isinstance(p, Chan))
        origin = other.origin if isinstance(other, Opaque) else "a tensor of unknown layout"
        for c in chans:
            freeze(c, f"concatenated with {origin} by {op}")
        return Opaque(f"output of {op}")
    on = [is_dim(c, dim) for c in chans]
    if all(o is True for o in on) and not any(c.flat for c in chans):
        rank = next((c.rank for c in chans if c.rank is not None), None)
        fronts = [f for f in (c.front() for c in chans) if f is not None]
        index = fronts[0] if fronts else chans[0].index
        return Chan(tuple(g for c in chans for g in c.segs), index, rank)
    if all(o is False for o in on) and all(neg_aligned(chans[0], c) for c in chans[1:]):
        for c in chans[1:]:
            tie(chans[0], c, op)
        return chans[0]
    for c in chans:
        freeze(c, f"cannot follow the channel dims through {op}")
    return Opaque(f"output of {op}")


def expand(freeze: Freeze, x: Value, sizes: Sequence[Value], rank: int | None, op: str) -> Value:
    """``expand(*sizes)`` (``sizes`` given) or ``expand_as(other)`` (only ``rank``, maybe None)."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    back = x.back()
    if back is None:
        return _fail(freeze, x, f"cannot follow the channel dim through {op} (unknown rank)", op)
    if sizes:
        rank = len(sizes)
        at = sizes[rank + back] if -back <= rank else None
        if at is not None and _literal_int(at) not in (None, -1):
            return _fail(freeze, x, f"{op} fixes the channel width", op)
    return Chan(x.segs, back, None, x.flat).moved(back, rank)


def getitem(freeze: Freeze, x: Value, index: Any, op: str) -> Value:
    """Basic indexing: full slices on the channel dim keep it, anything else on it freezes."""
    if not isinstance(x, Chan):
        return _non_chan(x, op)
    elems = index if isinstance(index, tuple) else (index,)
    kinds = [_index_kind(e) for e in elems]
    if "tensor" in kinds or kinds.count("ellipsis") > 1:
        return _fail(freeze, x, f"indexed with a tensor or an unsupported index by {op}", op)
    cut = kinds.index("ellipsis") if "ellipsis" in kinds else len(kinds)
    pre, post = kinds[:cut], kinds[cut + 1 :]
    has_ellipsis = cut < len(kinds)
    new_rank = None if x.rank is None else x.rank - kinds.count("int") + kinds.count("new")
    f, n = x.front(), x.back()
    i = o = 0
    for k in pre:
        if k == "new":
            o += 1
            continue
        if f is not None and i == f:
            if k != "full":
                return _fail(freeze, x, f"channel dim indexed by {op}", op)
            return Chan(x.segs, o, new_rank, x.flat)
        o += 0 if k == "int" else 1
        i += 1
    if f is None and i > 0:
        return _fail(freeze, x, f"cannot tell whether {op} indexes the channel dim (unknown rank)", op)
    if not has_ellipsis:
        return Chan(x.segs, f - i + o, new_rank, x.flat) if f is not None else Chan(x.segs, x.index, None, x.flat)
    j = q = -1
    for k in reversed(post):
        if k == "new":
            q -= 1
            continue
        if n is not None and j == n:
            if k != "full":
                return _fail(freeze, x, f"channel dim indexed by {op}", op)
            return Chan(x.segs, q, None, x.flat).moved(q, new_rank)
        q -= 0 if k == "int" else 1
        j -= 1
    if n is None and j < -1:
        return _fail(freeze, x, f"cannot tell whether {op} indexes the channel dim (unknown rank)", op)
    if f is not None:
        return Chan(x.segs, f - i + o, new_rank, x.flat)
    assert n is not None
    return Chan(x.segs, n - (j + 1) + (q + 1), new_rank, x.flat)


def _index_kind(e: Any) -> str:
    if isinstance(e, Static):
        e = e.value
    if e is None:
        return "new"
    if e is Ellipsis:
        return "ellipsis"
    if isinstance(e, slice):
        return "full" if (e.start, e.stop, e.step) == (None, None, None) else "part"
    if isinstance(e, (int, SizeOf)) and not isinstance(e, bool):
        return "int"
    return "tensor"
