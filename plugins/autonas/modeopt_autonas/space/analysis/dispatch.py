"""Dispatch of ``call_function`` / ``call_method`` nodes to the propagation rules."""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from . import layout, shaped
from .ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    ELEMENTWISE_METHODS,
    FUNCTIONAL_LAYERS,
    META_ATTRS,
    SHAPE_METHODS,
    SPATIAL_FUNCTIONS,
    is_elementwise_function,
    is_static_function,
)
from .params import bind_param, param_view
from .values import (
    Chan,
    Derived,
    Each,
    Opaque,
    Param,
    ShapeOf,
    SizeOf,
    Static,
    Tup,
    Value,
    is_dim,
    is_tensor_like,
    neg_aligned,
    param_sources,
)

if TYPE_CHECKING:
    from .propagate import _GraphPass

__all__ = ["call_function", "call_method"]

_CAT = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = frozenset({"mean", "sum", "amax", "amin"})
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}
_SPLIT_METHODS = frozenset({"chunk", "split", "tensor_split"})
_TRANSPOSE_FUNCTIONS = {torch.transpose, torch.swapaxes, torch.swapdims}
_TRANSPOSE_METHODS = frozenset({"transpose", "swapaxes", "swapdims"})
_IGNORE_EXTRA_METHODS = frozenset({"to", "type_as", "type"})  # extra args only give a dtype/device
_ASSERTS = {torch._assert}
_MATMUL = {operator.matmul, torch.matmul, torch.bmm}
#: ``torch.f(x, ...)`` forms of the layout methods, by method name.
_LAYOUT_FUNCTIONS: dict[Any, str] = {
    torch.flatten: "flatten",
    torch.permute: "permute",
    torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze",
    torch.reshape: "reshape",
    torch.unbind: "unbind",
    **{f: f.__name__ for f in (*_SPLIT_FUNCTIONS, *_REDUCE_FUNCTIONS, *_TRANSPOSE_FUNCTIONS)},
}


def _items(v: Any) -> list[Any]:
    return list(v.items) if isinstance(v, Tup) else [v]


def _varargs(p: _GraphPass, node: fx.Node, start: int, key: str) -> list[Value]:
    """Arguments given either as ``f(x, a, b)`` or ``f(x, (a, b))`` / ``f(x, key=(a, b))``."""
    rest: list[Any] = list(node.args[start:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    if not rest and key in node.kwargs:
        given: Any = node.kwargs[key]
        rest = list(given) if isinstance(given, (tuple, list)) else [given]
    return [p.val(a) for a in rest]


def _int_list(values: list[Value]) -> list[int] | None:
    out = []
    for v in values:
        if not (isinstance(v, Static) and isinstance(v.value, int) and not isinstance(v.value, bool)):
            return None
        out.append(v.value)
    return out


def _elementwise(p: _GraphPass, node: fx.Node, ignore_extra: bool = False) -> Value:
    x = p.val(node.args[0]) if node.args else Opaque("no input")
    if not ignore_extra:
        for a in [*node.args[1:], *node.kwargs.values()]:
            p.freeze(p.val(a), f"passed as an extra argument to {p.desc(node)}")
    if isinstance(x, (Chan, Opaque, Static, Derived)):
        return x
    if isinstance(x, Param):
        return Derived(frozenset() if x.constant else frozenset({x.name}))
    return Opaque(f"output of {p.desc(node)}")


def _with_param(p: _GraphPass, chan: Chan, param: Param, desc: str) -> Value:
    shape = param.shape
    if math.prod(shape) == 1:
        return chan
    back = chan.back()
    if back is None:
        p.freeze(chan, f"combined with {param.name} {list(shape)} by {desc} (channel position unknown)")
        return chan
    if len(shape) >= -back and shape[len(shape) + back] != 1 and not bind_param(p, chan, param, desc):
        p.freeze(
            chan,
            f"combined with parameter {param.name} of shape {list(shape)} along the channel dim "
            f"by {desc} (it would need slicing)",
        )
    if chan.rank is not None and len(shape) > chan.rank:
        return Chan(chan.segs, back, None, chan.flat).moved(back, len(shape))
    return chan


def _binary(p: _GraphPass, node: fx.Node) -> Value:
    desc = p.desc(node)
    a = p.val(node.args[0]) if node.args else Static()
    b = p.val(node.args[1]) if len(node.args) > 1 else p.val(node.kwargs.get("other", 1))
    size, factor = (a, b) if isinstance(a, SizeOf) else (b, a)
    if isinstance(size, SizeOf) and node.target in (operator.mul, operator.imul):
        value = factor.value if isinstance(factor, Static) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return SizeOf(size.of, size.dim, size.mul * value)  # e.g. num_kv_heads * n_rep
    _freeze_width_arithmetic(p, (a, b), desc)
    if isinstance(a, Chan) and isinstance(b, Chan):
        aligned = neg_aligned(a, b) if a.flat == b.flat else False
        if not aligned:
            why = "cannot tell whether the channel dims of" if aligned is None else "misaligned channel dims of"
            for c in (a, b):
                p.freeze(c, f"{why} the operands of {desc}")
            return Opaque(f"output of {desc}")
        p.tie(a, b, desc)
        table = p.ctx.table
        pick = b if len(a.segs) == 1 and table.size(a.segs[0]) == 1 and len(b.segs) == 1 else a
        if a.rank is not None and b.rank is not None and a.rank != b.rank:
            back = pick.back()
            assert back is not None
            return Chan(pick.segs, back, None, pick.flat).moved(back, max(a.rank, b.rank))
        if pick.rank is not None and (a.rank is None or b.rank is None) and pick.back() is not None:
            back = pick.back()
            assert back is not None
            return Chan(pick.segs, back, None, pick.flat)
        return pick
    if isinstance(a, Chan) or isinstance(b, Chan):
        chan, other = (a, b) if isinstance(a, Chan) else (b, a)
        assert isinstance(chan, Chan)
        if isinstance(other, (Static, SizeOf)):
            return chan
        if isinstance(other, Param):
            return _with_param(p, chan, other, desc)
        other_arg = (node.args[1] if len(node.args) > 1 else node.kwargs.get("other")) if chan is a else node.args[0]
        if shaped.broadcasts(chan, p.shape(other_arg)):
            return chan  # e.g. RoPE's cos/sin or a normalisation statistic: size 1 at the channel dim
        origin = other.origin if isinstance(other, Opaque) else "a value of unknown layout"
        p.freeze(chan, f"combined with {origin} by {desc}")
        # Keep following the (now frozen) channels, assuming the usual same-shape operands:
        # downstream layers then join this frozen group instead of each getting its own.
        return chan
    if isinstance(a, Opaque):
        return a
    if isinstance(b, Opaque):
        return b
    sources = param_sources(Tup((a, b)))
    if sources and (is_tensor_like(a) or is_tensor_like(b)):
        return Derived(sources)  # e.g. gain * weight: still parameters only
    if is_tensor_like(a) or is_tensor_like(b):
        return Opaque(f"output of {desc}")
    return Static()


def _roll(p: _GraphPass, node: fx.Node) -> Value:
    """``torch.roll(x, shifts, dims)``: channels move only when the channel dim is rolled."""
    x = p.val(node.args[0])
    dims = p.val(p.arg(node, 2, "dims"))
    literal = _int_list(list(dims.items) if isinstance(dims, Tup) else [dims])
    if not isinstance(x, Chan) or not literal:
        return p.boundary(node)
    on = [is_dim(x, d) for d in literal]
    if any(o is None for o in on):
        return p.boundary(node)
    if any(on):
        p.freeze(x, f"rolled along the channel dim by {p.desc(node)}")
    return x


def _getattr(p: _GraphPass, node: fx.Node) -> Value:
    x, attr = p.val(node.args[0]), node.args[1]
    if attr == "shape":
        return ShapeOf(x)
    if attr in META_ATTRS:
        return Static()
    if attr == "data":
        return x
    if attr == "mT":
        return layout.transpose(p.freeze, x, -2, -1, p.desc(node))
    if isinstance(x, Chan):
        return p.boundary(node)
    return x if isinstance(x, Opaque) else Static()


def _getitem(p: _GraphPass, node: fx.Node) -> Value:
    x, index = p.val(node.args[0]), node.args[1]
    idx = p.val(index) if isinstance(index, fx.Node) else index
    idx = idx.value if isinstance(idx, Static) else idx
    if isinstance(x, Tup):
        if isinstance(idx, int) and -len(x.items) <= idx < len(x.items):
            return x.items[idx]
        return Tup(x.items[idx]) if isinstance(idx, slice) else Opaque("an element of a tuple")
    if isinstance(x, Each):
        return x if isinstance(idx, slice) else x.item
    if isinstance(x, ShapeOf):
        return SizeOf(x.of, idx) if isinstance(idx, int) else Static()
    if isinstance(x, (Static, SizeOf)):
        return Static()
    if isinstance(x, Chan):
        return layout.getitem(p.freeze, x, p.raw(index), p.desc(node))
    if isinstance(x, Param):
        return Opaque(f"a slice of {x.name}")
    return x


def _cat(p: _GraphPass, node: fx.Node) -> Value:
    parts = p.val(p.arg(node, 0, "tensors"))
    dim = p.int_arg(node, 1, "dim", 0)
    desc = p.desc(node)
    if not isinstance(dim, int):
        return p.boundary(node)
    if isinstance(parts, Each):
        item = parts.item
        if isinstance(item, Chan) and is_dim(item, dim) is False:
            return item
        return p.boundary(node)
    if not isinstance(parts, Tup):
        return p.boundary(node)
    items = list(parts.items)
    chans = [c for c in items if isinstance(c, Chan)]
    if chans and is_dim(chans[0], dim) is False:
        # a parameter concatenated along another dim (a class token) joins the channels' groups
        for i, item in enumerate(items):
            if isinstance(item, Param) and bind_param(p, chans[0], item, desc):
                items[i] = Chan(chans[0].segs, chans[0].index, chans[0].rank, chans[0].flat)
    return layout.cat(p.freeze, p.tie, items, dim, desc)


def _reduce(p: _GraphPass, node: fx.Node, x: Value) -> Value:
    dims_arg = p.val(p.arg(node, 1, "dim"))
    keepdim = p.int_arg(node, 2, "keepdim", False)
    if isinstance(dims_arg, Static) and dims_arg.value is None:
        dims: list[int] | None = None
    else:
        dims = _int_list(_items(dims_arg))
        if dims is None or not isinstance(keepdim, bool):
            return p.boundary(node)
    return layout.reduce(p.freeze, x, dims, bool(keepdim), p.desc(node))


def _layout_common(p: _GraphPass, node: fx.Node, name: str, x: Value) -> Value | None:
    """Rules shared by ``torch.f(x, ...)`` and ``x.f(...)`` forms; None when ``name`` is not one."""
    desc = p.desc(node)
    if name == "flatten":
        if isinstance(x, Chan) and not x.flat:
            shaped_out = shaped.reshape(p, node, x, [], desc)  # with shapes: any regrouping, e.g. patch merging
            if shaped_out is not None:
                return shaped_out
        start, end = p.int_arg(node, 1, "start_dim", 0), p.int_arg(node, 2, "end_dim", -1)
        if isinstance(start, int) and isinstance(end, int):
            return layout.flatten(p.freeze, x, start, end, desc)
        return p.boundary(node)
    if name == "permute":
        return layout.permute(p.freeze, x, _varargs(p, node, 1, "dims"), desc)
    if name in _TRANSPOSE_METHODS:
        return layout.transpose(p.freeze, x, p.val(p.arg(node, 1, "dim0")), p.val(p.arg(node, 2, "dim1")), desc)
    if name == "unsqueeze":
        d = p.int_arg(node, 1, "dim")
        return layout.unsqueeze(p.freeze, x, d, desc) if isinstance(d, int) else p.boundary(node)
    if name == "squeeze":
        d = p.int_arg(node, 1, "dim")
        return layout.squeeze(p.freeze, x, d if isinstance(d, int) else None, desc)
    if name in ("view", "reshape"):
        args = _varargs(p, node, 1, "shape")
        out: Value | None = shaped.reshape(p, node, x, args, desc) if isinstance(x, Chan) else None
        if out is None:
            out = layout.view(p.freeze, x, args, desc)
        if not isinstance(out, Chan):
            _freeze_size_sources(p, args, desc)
        return out
    if name in _REDUCE_METHODS:
        return _reduce(p, node, x)
    if name in _SPLIT_METHODS or name == "unbind":
        at = 1 if name == "unbind" else 2
        d = p.int_arg(node, at, "dim", 0)
        if not isinstance(d, int):
            return p.boundary(node)
        if isinstance(x, Chan) and name != "unbind" and is_dim(x, d):
            pieces = shaped.split(p, node, x, name, desc)
            if pieces is not None:
                return pieces
        return layout.split(p.freeze, x, d, desc, removes_dim=name == "unbind")
    return None


def call_function(p: _GraphPass, node: fx.Node) -> Value:
    t = node.target
    if t is builtins.getattr:
        return _getattr(p, node)
    if t is operator.getitem:
        return _getitem(p, node)
    if t in _ASSERTS or getattr(t, "__name__", "") == "_assert_is_none":
        return Static()
    if isinstance(t, type) and issubclass(t, tuple):  # a namedtuple built by the traced code
        return Tup(tuple(p.val(a) for a in [*node.args, *node.kwargs.values()]))
    if t in FUNCTIONAL_LAYERS:
        return p.functional_layer(node, *FUNCTIONAL_LAYERS[t])
    if t is torch.roll:
        return _roll(p, node)
    if t is F.scaled_dot_product_attention:
        return shaped.attention(p, node, p.desc(node))
    if t in _MATMUL:
        out = shaped.matmul(p, node, p.desc(node))
        return out if out is not None else p.boundary(node)
    if is_elementwise_function(t):
        return _elementwise(p, node)
    x = p.val(node.args[0]) if node.args else Static()
    if t in SPATIAL_FUNCTIONS:
        if p.int_arg(node, 99, "return_indices", False):
            return p.boundary(node)
        return layout.spatial(p.freeze, x, SPATIAL_FUNCTIONS[t], p.desc(node))
    if t is F.pad:
        pads = p.val(p.arg(node, 1, "pad"))
        return layout.pad(p.freeze, x, _items(pads), p.desc(node)) if isinstance(pads, Tup) else p.boundary(node)
    if t in BINARY_FUNCTIONS:
        return _binary(p, node)
    if t in _CAT:
        return _cat(p, node)
    name = _LAYOUT_FUNCTIONS.get(t, "") if callable(t) else ""
    if name and isinstance(x, Param) and name in _PARAM_VIEW_METHODS:
        return _param_method(p, node, name, x)
    if name:
        result = _layout_common(p, node, name, x)
        if result is not None:
            return result
    if is_static_function(t) and not any(is_tensor_like(p.val(a)) for a in [*node.args, *node.kwargs.values()]):
        if t in _WIDTH_ARITHMETIC:
            _freeze_width_arithmetic(p, [p.val(a) for a in [*node.args, *node.kwargs.values()]], p.desc(node))
        return Static()
    return p.boundary(node)


#: number-valued operators that may turn a channel width into another size (comparisons do not)
_WIDTH_ARITHMETIC = frozenset({
    operator.floordiv, operator.truediv, operator.mod, operator.add, operator.sub, operator.mul, operator.pow,
    operator.neg, divmod, math.sqrt, math.ceil, math.floor, int, round,
})


def _freeze_width_arithmetic(p: _GraphPass, values: Sequence[Value], desc: str) -> None:
    """Arithmetic on a channel width (``C // self.num_heads`` as a reshape size) gives a number the analysis
    does not relate to the subnet: the width keeps its size, or whatever uses the number would break."""
    for value in values:
        if isinstance(value, SizeOf) and isinstance(value.of, Chan) and value.dim is not None \
                and is_dim(value.of, value.dim):
            p.freeze(value.of, f"its width enters arithmetic ({desc}) that the analysis does not follow")


def _freeze_size_sources(p: _GraphPass, args: Sequence[Value], desc: str) -> None:
    """Channels whose width a reshape reads (``B, C, H, W = x.shape`` ... ``reshape(B, C, H, W)``) while its
    own output does not follow them: the size would change with the subnet, the reshaped tensor would not
    (timm's lambda layer), so those channels keep their width."""
    for arg in args:
        if isinstance(arg, SizeOf) and isinstance(arg.of, Chan) and arg.dim is not None and is_dim(arg.of, arg.dim):
            p.freeze(arg.of, f"its width is the size of a reshape whose tensor does not follow it ({desc})")


def _param_method(p: _GraphPass, node: fx.Node, name: str, x: Param) -> Value:
    args = _varargs(p, node, 1, "shape" if name in ("view", "reshape") else "dims")
    if name in ("unsqueeze",):
        args = [p.val(p.arg(node, 1, "dim"))]
    view = param_view(x, name, args)
    if view is not None:
        return view
    return Derived(frozenset() if x.constant else frozenset({x.name}))


_PARAM_VIEW_METHODS = frozenset({"view", "reshape", "unsqueeze", "expand", "permute", "transpose", "contiguous",
                                 "to", "type_as", "float", "half", "clone", "detach"})


def call_method(p: _GraphPass, node: fx.Node) -> Value:
    name = str(node.target)
    x = p.val(node.args[0])
    if isinstance(x, Param) and name in _PARAM_VIEW_METHODS:
        return _param_method(p, node, name, x)
    if name in ("matmul", "bmm"):
        out = shaped.matmul(p, node, p.desc(node))
        return out if out is not None else p.boundary(node)
    if name in SHAPE_METHODS:
        if name == "size":
            d = p.int_arg(node, 1, "dim")
            return SizeOf(x, d) if isinstance(d, int) else ShapeOf(x)
        return Static()
    if name in ELEMENTWISE_METHODS:
        return _elementwise(p, node, ignore_extra=name in _IGNORE_EXTRA_METHODS)
    if name in BINARY_METHODS:
        return _binary(p, node)
    if name == "expand":
        return layout.expand(p.freeze, x, _varargs(p, node, 1, "size"), None, p.desc(node))
    if name == "expand_as":
        other = p.val(node.args[1])
        rank = other.rank if isinstance(other, Chan) else None
        return layout.expand(p.freeze, x, [], rank, p.desc(node))
    result = _layout_common(p, node, name, x)
    if result is not None:
        return result
    return p.boundary(node)
