"""Parameters combined with the channels: views of a parameter, and binding it to the channels' groups.

A layer scale (``x * self.gamma``), a position embedding (``x + self.pos_embed``), a class token
(``cat((self.cls_token.expand(B, -1, -1), x), dim=1)``) or a ``[C, 1, 1]`` scale holds one entry per
channel of the tensor it meets: it must shrink with those channels. The analysis follows simple views
of a parameter (reshape to one non-1 dim, unsqueeze, expand, permute/transpose) so it knows which dim
of the stored tensor meets the channel dim, then binds that dim to the channels' groups as the
``"tensor:<name>"`` role of the module that owns the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .values import Chan, Param, Static

if TYPE_CHECKING:
    from .propagate import _GraphPass

__all__ = ["bind_param", "param_view"]


def _literal(v: Any) -> int | None:
    if isinstance(v, Static) and isinstance(v.value, int) and not isinstance(v.value, bool):
        return v.value
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return None


def _dims(p: Param) -> list[int | None]:
    return list(range(len(p.shape))) if p.dims is None else list(p.dims)


def _reshape(p: Param, shape: Sequence[Any]) -> Param | None:
    """A reshape that moves the parameter's single non-1 dim (e.g. ``gamma.reshape(1, -1, 1, 1)``)."""
    big = [i for i, n in enumerate(p.shape) if n != 1]
    sizes = [_literal(s) for s in shape]
    if len(big) != 1 or any(s is None for s in sizes):
        return None
    numel = math.prod(p.shape)
    known = math.prod(s for s in sizes if s is not None and s != -1)
    resolved = [numel // known if s == -1 else s for s in sizes]
    targets = [i for i, n in enumerate(resolved) if n != 1]
    if math.prod(n for n in resolved if n is not None) != numel or len(targets) != 1:
        return None
    if sizes[targets[0]] != -1:
        # A literal size (e.g. timm's ``self.scale.view(self.shape)`` with a stored tuple) would stay
        # fixed when the parameter shrinks: not a view that follows the subnet.
        return None
    dims: list[int | None] = [None] * len(resolved)
    dims[targets[0]] = _dims(p)[big[0]]
    return Param(p.name, tuple(int(n) for n in resolved if n is not None), tuple(dims), p.constant)


def param_view(p: Param, method: str, args: Sequence[Any]) -> Param | None:
    """The parameter view ``p.<method>(*args)`` produces, or None when it is not a tracked view."""
    dims = _dims(p)
    shape = list(p.shape)
    if method in ("view", "reshape"):
        return _reshape(p, args)
    if method == "unsqueeze" and len(args) == 1 and _literal(args[0]) is not None:
        d = int(_literal(args[0]))  # type: ignore[arg-type]
        d = d if d >= 0 else d + len(shape) + 1
        return Param(p.name, (*shape[:d], 1, *shape[d:]), (*dims[:d], None, *dims[d:]), p.constant)
    if method == "expand":
        if len(args) < len(shape):
            return None
        lead = len(args) - len(shape)
        new_shape: list[int] = []
        for i, a in enumerate(args):
            old = shape[i - lead] if i >= lead else 1
            n = _literal(a)
            new_shape.append(old if n in (None, -1) and old != 1 else (n if n not in (None, -1) else -1))
            if i >= lead and old != 1 and n not in (None, -1, old):
                return None
        return Param(p.name, tuple(new_shape), (*([None] * lead), *dims), p.constant)
    if method in ("permute", "transpose"):
        order = [_literal(a) for a in args]
        if any(o is None for o in order):
            return None
        if method == "transpose":
            if len(order) != 2:
                return None
            perm = list(range(len(shape)))
            a, b = (int(o) % len(shape) for o in order)  # type: ignore[arg-type]
            perm[a], perm[b] = perm[b], perm[a]
        else:
            perm = [int(o) % len(shape) for o in order]  # type: ignore[arg-type]
            if sorted(perm) != list(range(len(shape))):
                return None
        return Param(p.name, tuple(shape[i] for i in perm), tuple(dims[i] for i in perm), p.constant)
    if method in ("to", "type_as", "float", "half", "contiguous", "clone", "detach"):
        return p
    return None


def bind_param(pass_: _GraphPass, chan: Chan, param: Param, desc: str) -> bool:
    """Bind ``param`` (meeting ``chan`` at the channel dim) as a tensor role of its owner; False when it
    cannot be (a traced constant, a registered layer's own tensor, an untracked dim, a width mismatch)."""
    back = chan.back()
    if back is None or chan.flat or param.constant or -back > len(param.shape):
        return False
    position = len(param.shape) + back
    source_dim = param.source_dim(position)
    owner, _, attr = param.name.rpartition(".")
    module = pass_._module(owner)
    if source_dim is None or module is None or pass_.ctx.layers.lookup_class(type(module)) is not None:
        return False
    tensor = module._parameters.get(attr, module._buffers.get(attr))
    table = pass_.ctx.table
    width = sum(table.size(g) for g in chan.segs)
    if tensor is None or tensor.shape[source_dim] != width:
        return False
    role = f"tensor:{attr}"
    table.bind(owner, role, [(g, 1) for g in chan.segs], desc, tensors=((attr, source_dim),))
    return True
