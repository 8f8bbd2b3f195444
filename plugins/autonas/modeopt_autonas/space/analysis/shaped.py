"""Rules that need the example's shapes (a trace with values): reshapes of the channel dim, broadcasting
against tensors of unknown origin, attention (``scaled_dot_product_attention``, batched ``matmul``).

With shapes, a reshape is read as a regrouping of dims: ``[B, S, H*d] -> [B, S, H, d]`` splits the
channel dim into heads of ``d`` features (the group becomes *coarse*: ``H`` head channels of ``d``
features each), ``[B, S, H, d] -> [B, S, H*d]`` merges them back, ``[B, kv, n, S, d] -> [B, kv*n, S, d]``
repeats each key/value head ``n`` times (grouped-query attention), and ``[B, N, 3*H*d] -> [B, N, 3, H,
d]`` splits a fused projection into three tied pieces. The dim that carries the channels after a
split must be ``-1`` in the reshape's arguments, or a literal held by an int attribute of the module
doing the reshape (e.g. ``self.num_heads``): that attribute then follows the subnet (an ``attr:``
binding); any other literal would fix the width, so the group is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

from .value_tracer import SHAPE_KEY
from .values import Chan, Opaque, SizeOf, Static, Tup, Value, is_dim

if TYPE_CHECKING:
    from .propagate import _GraphPass

__all__ = ["attention", "broadcasts", "matmul", "reshape", "split"]

ATTR_ROLE_PREFIX = "attr:"


def broadcasts(chan: Chan, shape: tuple[int, ...] | None) -> bool | None:
    """Whether a tensor of ``shape`` broadcasts along ``chan``'s channel dim (size 1 there, or absent);
    None when the shape or the channel position is unknown."""
    back = chan.back()
    if shape is None or back is None:
        return None
    position = len(shape) + back
    return position < 0 or shape[position] == 1


def _groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive dims of ``a`` and ``b`` whose products match (how a reshape regroups dims)."""
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        gi: list[int] = []
        gj: list[int] = []
        pi = pj = 1
        if i < len(a):
            gi.append(i)
            pi *= a[i]
            i += 1
        if j < len(b):
            gj.append(j)
            pj *= b[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(a):
                gi.append(i)
                pi *= a[i]
                i += 1
            elif pj < pi and j < len(b):
                gj.append(j)
                pj *= b[j]
                j += 1
            else:
                return None
        out.append((gi, gj))
    return out


def _literal_of(arg: Any) -> Any:
    return arg.value if isinstance(arg, Static) else arg


def _follow(p: _GraphPass, node: fx.Node, value: int, prefer: tuple[str, ...]) -> tuple[str, str] | None:
    """The int attribute of the module doing ``node`` that holds ``value`` (e.g. ``num_heads``), or None;
    among several, the first whose name contains one of ``prefer``."""
    stack = node.meta.get("nn_module_stack") or {}
    name = p.traced.qualify(next(reversed(stack.values()))[0]) if stack else p.traced.scope
    module = p._module(name)
    if module is None:
        return None
    matches = [k for k, v in vars(module).items() if type(v) is int and v == value and not k.startswith("_")]
    for word in prefer:
        if len(matches) <= 1:
            break
        matches = [k for k in matches if word in k] or matches
    return (name, matches[0]) if len(matches) == 1 else None


def reshape(p: _GraphPass, node: fx.Node, x: Chan, args: Sequence[Value], op: str) -> Value | None:
    """A reshape of ``x`` read from the example's shapes; None when the shapes are not known."""
    in_shape, out_shape = p.shape(node.args[0]), p.shape(node)
    front = x.front()
    if in_shape is None or out_shape is None or front is None or x.flat:
        return None
    table = p.ctx.table
    groups = _groups(in_shape, out_shape)
    if groups is None:
        return None
    for gi, gj in groups:
        if front not in gi:
            continue
        lead = math.prod(in_shape[d] for d in gi if d < front)
        unit = math.prod(in_shape[d] for d in gi if d > front)
        if len(gj) == 1:  # merge: leading dims copy the channel structure, trailing ones are its units
            segs = tuple(table.coarse(s, unit) for s in x.segs) if unit > 1 else x.segs
            out = Chan(segs * lead, gj[0], len(out_shape))
            given = args[gj[0]] if len(args) == len(out_shape) else Static(-1)
            return out if _size_follows(p, node, out, given, ("dim", "size"), op) else Opaque(f"output of {op}")
        if len(gi) != 1:
            p.freeze(x, f"dims regrouped around the channel dim by {op}")
            return Opaque(f"output of {op}")
        return _split_channel(p, node, x, gj, out_shape, args, op)
    return None


def _chan_size(value: Value) -> bool:
    return isinstance(value, SizeOf) and isinstance(value.of, Chan)


def _size_follows(p: _GraphPass, node: fx.Node, out: Chan, given: Value, prefer: tuple[str, ...], op: str) -> bool:
    """Whether the size a reshape gives the channel dim follows the subnet: ``-1``, the size of a tensor
    with the same channels (tied), or a literal held by an int attribute (which then follows); any
    other size (a literal, or arithmetic on sizes of other tensors) freezes the channels."""
    value = _literal_of(given)
    if value == -1:
        return True
    if isinstance(given, SizeOf) and isinstance(given.of, Chan) and given.dim is not None:
        if is_dim(given.of, given.dim):
            table = p.ctx.table
            segs = tuple(table.coarse(s, given.mul) for s in given.of.segs)
            return table.union_seq(out.segs, segs, f"in {op} (a size read from another tensor)")
    if isinstance(value, int) and not isinstance(value, bool):
        follows = _follow(p, node, value, prefer)
        if follows is not None:
            module, attr = follows
            p.ctx.table.bind(module, ATTR_ROLE_PREFIX + attr, [(s, 1) for s in out.segs], f"in {op}")
            return True
    p.freeze(out, f"the channel dim gets a size fixed by {op} (a literal, or a size read from elsewhere)")
    return False


def _split_channel(
    p: _GraphPass, node: fx.Node, x: Chan, gj: list[int], out_shape: tuple[int, ...], args: Sequence[Value], op: str
) -> Value:
    """The channel dim split into the dims ``gj``: ``pieces`` copies, a channel dim, ``unit`` features each."""
    table = p.ctx.table
    given = list(args) if len(args) == len(out_shape) else [Static(None)] * len(out_shape)
    literals = [_literal_of(a) for a in given]
    varying = next((d for d in gj if literals[d] == -1), None)
    follows = None
    if varying is None:
        varying = next((d for d in gj if _chan_size(given[d])), None)
    if varying is None:
        # right to left, before the innermost dim (``head_dim``): in (3, H, d) with H == 3 the heads are H
        for d in reversed(gj[:-1]):
            value = literals[d]
            if isinstance(value, int) and out_shape[d] > 1 and (follows := _follow(p, node, value, ("head",))):
                varying = d
                break
    if varying is None:
        p.freeze(x, f"the channel dim split by {op} into sizes fixed by literals")
        return Opaque(f"output of {op}")
    pieces = math.prod(out_shape[d] for d in gj if d < varying)
    unit = math.prod(out_shape[d] for d in gj if d > varying)
    total = sum(table.size(s) for s in x.segs)
    parts = table.split(x.segs, [total // pieces] * pieces) if pieces > 1 else [x.segs]
    if parts is None:
        p.freeze(x, f"the channel dim cannot be cut into {pieces} equal pieces by {op}")
        return Opaque(f"output of {op}")
    for part in parts[1:]:  # one reshape size for every piece (e.g. q, k and v of a fused projection)
        table.union_seq(parts[0], part, f"in {op} (pieces of one reshape)")
    heads = tuple(table.units(s, unit) for s in parts[0])
    if any(h is None for h in heads):
        p.freeze(x, f"channels of {op} are not whole units of {unit}")
        return Opaque(f"output of {op}")
    out = Chan(tuple(h for h in heads if h is not None), varying, len(out_shape))
    if follows is not None:
        module, attr = follows
        table.bind(module, ATTR_ROLE_PREFIX + attr, [(s, 1) for s in out.segs], f"in {op}")
    elif literals[varying] != -1 and not _size_follows(p, node, out, given[varying], ("head",), op):
        return Opaque(f"output of {op}")
    return out


def split(p: _GraphPass, node: fx.Node, x: Chan, method: str, op: str) -> Value | None:
    """``chunk``/``split``/``tensor_split`` along the channel dim: the pieces become segment groups (the
    mirror of ``cat``). ``chunk(n)`` adapts to the width, so its pieces are tied; a literal piece size
    must be held by an int attribute of the module (GPT-2's ``split_size``), which then follows the
    pieces' width; other literal sizes would fix the widths, so they freeze. None without shapes."""
    shapes = node.meta.get(SHAPE_KEY)
    front = x.front()
    if not isinstance(shapes, list) or front is None:
        return None
    sizes = [s[front] for s in shapes]
    table = p.ctx.table
    pieces = table.split(x.segs, sizes)
    if pieces is None:
        return None
    follows = None
    if method != "chunk":
        given = _literal_of(p.val(p.arg(node, 1, "split_size_or_sections")))
        if isinstance(given, int) and len(set(sizes)) == 1:
            follows = _follow(p, node, given, ("split", "size"))
        if follows is None:
            p.freeze(x, f"split along the channel dim by {op} into sizes fixed by literals")
            return Opaque(f"output of {op}")
    for piece in pieces[1:]:  # one size for every piece
        if not table.union_seq(pieces[0], piece, f"in {op} (pieces of one split)"):
            return Opaque(f"output of {op}")
    if follows is not None:
        module, attr = follows
        table.bind(module, ATTR_ROLE_PREFIX + attr, [(s, 1) for s in pieces[0]], f"in {op}")
    return Tup(tuple(Chan(piece, x.index, x.rank) for piece in pieces))


def attention(p: _GraphPass, node: fx.Node, desc: str) -> Value:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, ..., enable_gqa)``: the head dims of q, k and
    v are tied (with grouped-query attention each k/v head serves ``Hq / Hkv`` query heads); the output
    has q's heads."""
    q, k, v = (p.val(p.arg(node, i, name)) for i, name in enumerate(("query", "key", "value")))
    shapes = [p.shape(p.arg(node, i, name)) for i, name in enumerate(("query", "key", "value"))]
    if not all(isinstance(t, Chan) for t in (q, k, v)) or any(s is None for s in shapes):
        return p.boundary(node)
    assert isinstance(q, Chan) and isinstance(k, Chan) and isinstance(v, Chan)
    if not (q.back() == k.back() == v.back() == -3):
        return p.boundary(node)
    table = p.ctx.table
    hq, hk = shapes[0][-3], shapes[1][-3]  # type: ignore[index]
    for other in (k, v):
        segs = other.segs if hq == hk else tuple(table.coarse(s, hq // hk) for s in other.segs)
        if hq % hk or not table.union_seq(q.segs, segs, f"in {desc}"):
            return p.boundary(node)
    mask = p.val(p.arg(node, 3, "attn_mask"))
    if not (isinstance(mask, Static) and mask.value is None):
        mask_shape = p.shape(p.arg(node, 3, "attn_mask"))
        if isinstance(mask, Chan) or not broadcasts(q, mask_shape):
            p.freeze(q, f"an attention mask with one entry per head in {desc}")
    return Chan(q.segs, q.index, q.rank)


def matmul(p: _GraphPass, node: fx.Node, desc: str) -> Value | None:
    """A batched matmul whose batch dims hold the channels of both operands (attention scores and
    values per head): tied, kept by the output. None when this is not that case."""
    a, b = p.val(node.args[0]), p.val(node.args[1]) if len(node.args) > 1 else None
    sa, sb, so = p.shape(node.args[0]), p.shape(node.args[1]) if len(node.args) > 1 else None, p.shape(node)
    if not (isinstance(a, Chan) and isinstance(b, Chan)) or sa is None or sb is None or so is None:
        return None
    ba, bb = a.back(), b.back()
    if ba is None or bb is None or ba > -3 or bb > -3 or ba != bb or len(sa) < 3 or len(sb) < 3:
        return None  # a channel dim in a matrix dim (a contraction or a row/column): not this rule
    if not p.ctx.table.union_seq(a.segs, b.segs, f"in {desc}"):
        return Opaque(f"output of {desc}")
    return Chan(a.segs, len(so) + ba, len(so))
