"""Composite layers: registered layers whose spec describes their own channel flow (attention).

An ``nn.MultiheadAttention`` takes channels in through several inputs (query, key, value), makes heads
inside itself (the rows of its in-projection and the columns of its output projection, which its
forward uses functionally) and gives a new group out. Its :class:`~..layers.LayerSpec` names each of
these places as a role (``inputs``, ``internal``, ``output``; a role ``"<child>.<role>"`` belongs to a
child layer); this module binds them for one call. Nothing here knows attention: a third-party module
with the same shape of flow registers a spec of its own.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from ..layers import LayerCall, LayerSpec
from .values import Chan, Opaque, Static, Tup, Value

if TYPE_CHECKING:
    from .propagate import _GraphPass

__all__ = ["composite_layer"]


@functools.cache
def _parameters(cls: type) -> tuple[str, ...]:
    """The names of ``cls.forward``'s parameters after ``self`` (positional arguments are matched to them)."""
    try:
        params = list(inspect.signature(inspect.unwrap(getattr(cls, "forward"))).parameters.values())[1:]  # noqa: B009
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _arguments(node: fx.Node, module: nn.Module) -> dict[str, Any]:
    names = _parameters(type(module))  # type: ignore[arg-type]
    out = {names[i] if i < len(names) else f"*{i}": a for i, a in enumerate(node.args)}
    out.update(node.kwargs)
    return out


def _target(name: str, role: str) -> tuple[str, str]:
    """``(module, role)`` of a spec role: ``"out_proj.in"`` is role ``in`` of the child ``out_proj``."""
    child, _, own = role.rpartition(".")
    return (f"{name}.{child}" if child else name), own


def _used_items(node: fx.Node, items: int) -> frozenset[int]:
    """The items of a tuple output the graph uses (all of them when it is used other than by indexing)."""
    used: set[int] = set()
    for user in node.users:
        index = user.args[1] if user.op == "call_function" and len(user.args) > 1 else None
        if user.target is not operator.getitem or not isinstance(index, int):
            return frozenset(range(items))
        if user.users:
            used.add(index % items)
    return frozenset(used)


def _call(p: _GraphPass, node: fx.Node, arguments: dict[str, Any], items: int) -> LayerCall:
    shapes: dict[str, tuple[int, ...] | None] = {}
    literals: dict[str, Any] = {}
    for pname, a in arguments.items():
        value = p.val(a)
        if isinstance(value, Static):
            literals[pname] = value.value
        elif isinstance(a, fx.Node):
            shapes[pname] = p.shape(a)
    return LayerCall(shapes, literals, _used_items(node, items))


def _tie_to_input(p: _GraphPass, gid: int, repeat: int, segs: list[tuple[int, int]], name: str, where: str) -> None:
    """Keep the internal dim's width equal to the input's: the input's channels become units of ``repeat``
    features (whole heads), tied to the internal channels."""
    table = p.ctx.table
    units = table.units(segs[0][0], repeat) if len(segs) == 1 and segs[0][1] == 1 else None
    if units is None or table.size(units) != table.size(gid):
        reason = f"{name}: its fused parent needs num_heads x head_dim == the input width, which is not whole heads"
        table.freeze(gid, reason)
        for g, _ in segs:
            table.freeze(g, reason)
        return
    table.union(units, gid, f"(heads x head size == input width of {name}) {where}")


def composite_layer(p: _GraphPass, node: fx.Node, name: str, module: nn.Module, spec: LayerSpec) -> Value:
    """Bind one call of a composite layer (see ``LayerSpec``) and return its output's value."""
    ctx, table = p.ctx, p.ctx.table
    where = p.where(node)
    arguments = _arguments(node, module)
    widths = dict(spec.widths)
    touched: list[int] = []
    first: list[tuple[int, int]] | None = None
    rank = None
    inputs = {pname for pname, _ in spec.inputs}
    for pname, role in spec.inputs:
        if pname not in arguments:
            continue
        x = p.val(arguments[pname])
        if isinstance(x, Static) and x.value is None:
            continue
        rank = x.rank if isinstance(x, Chan) and rank is None else rank
        segs = p._input_segments(x, spec.in_dim, widths[role], name, module)
        table.bind(*_target(name, role), segs, where)
        touched += [g for g, _ in segs]
        first = segs if first is None else first
    for pname, a in arguments.items():
        if pname not in inputs:
            p.freeze(p.val(a), f"passed as an extra argument to {name}")
    if name not in ctx.out_groups:
        ctx.out_groups[name] = table.new(widths[spec.output], producer=True)
    out_group = ctx.out_groups[name]
    table.bind(*_target(name, spec.output), [(out_group, 1)], where)
    touched.append(out_group)
    items = spec.tuple_output[1] if spec.tuple_output is not None else 1
    why = spec.check_call(_call(p, node, arguments, items)) if spec.check_call is not None else ""
    parent = p._module(name.rpartition(".")[0]) if name else None
    fused = parent is not None and isinstance(parent, spec.fused_parents)
    for i, dim in enumerate(spec.internal):
        key = f"{name}#internal{i}"
        if key not in ctx.out_groups:
            ctx.out_groups[key] = table.new(dim.size, producer=True)
        gid = ctx.out_groups[key]
        for role, pieces, repeat in dim.roles:
            table.bind(*_target(name, role), [(gid, repeat)] * pieces, where)
        if why:
            table.freeze(gid, f"{name}: {why}")
        if fused and first is not None and dim.roles:
            _tie_to_input(p, gid, dim.roles[0][2], first, name, where)
        touched.append(gid)
    reasons = [f"{name}: {spec.frozen_reason}"] if spec.frozen_reason else []
    glob = ctx.glob_match(name, ctx.frozen_globs)
    if glob is not None:
        reasons.append(f"frozen by user glob {glob!r}")
    for reason in reasons:
        for gid in touched:
            table.freeze(gid, reason)
    out = Chan((out_group,), spec.out_dim, None).moved(spec.out_dim, rank)
    if spec.tuple_output is None:
        return out
    item, items = spec.tuple_output
    return Tup(tuple(out if i == item else Opaque(f"output {i} of {name}") for i in range(items)))
