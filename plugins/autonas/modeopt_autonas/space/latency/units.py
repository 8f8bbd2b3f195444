"""Timed units: one per call of a searchable layer in a forward pass, with the widths it can run at.

A *unit* is one call of a dynamic leaf module (a conv, linear or norm layer that no other dynamic
module contains) during a forward pass on the dummy input at the max subnet. Its cost is a function
of its *axes*: the active width of each bound dimension (``in``/``out``/``features``, each a sum of
channel-group widths) and its extra hparams (kernel size). Everything else about the call (layer
class and hyperparameters, the input's shape apart from its channel dim, dtype) is fixed and goes
into the unit's *signature*, so identical layers (ResNet's repeated 3x3 convs) share measurements.

A *variant* is the exported plain layer at one axis tuple, built without copying weights: the
dynamic module is cloned onto the ``meta`` device, narrowed, exported, and its tensors become
contiguous views of the first elements of the real (flattened) tensors, as does its input. Timing a
variant therefore times exactly what the exported model runs for that layer, on the layer's device
and dtype, with no allocation per variant beyond the views.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..dynamic import DynamicModule, DynamicSequential
from ..errors import SearchSpaceError
from ..export import export_model
from ..hparam import Hparam

__all__ = ["Axis", "TensorSpec", "Unit", "collect_units", "signature_of"]

# Past this many distinct axis tuples a layer with dependent axes is not enumerated (see Unit.tuples).
_MAX_ENUMERATED = 100_000


class TensorSpec:
    """Shape, dtype and device of a recorded tensor argument (the tensor itself is not kept)."""

    __slots__ = ("device", "dtype", "shape")

    def __init__(self, t: torch.Tensor) -> None:
        self.shape, self.dtype, self.device = tuple(t.shape), t.dtype, t.device

    def __repr__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


@dataclass(frozen=True)
class Axis:
    """One dimension of a unit's cost: ``sum(values[hp] * repeat for hp, repeat in terms)``."""

    name: str  # a role ("in", "out", "features") or "kernel"
    terms: tuple[tuple[int, int], ...]  # (hparam index, repeat)


@dataclass
class Unit:
    """One call of a dynamic leaf layer (see the module doc)."""

    name: str  # module name, plus "#k" for the k-th call of a module called several times
    module: DynamicModule
    axes: tuple[Axis, ...]
    inputs: tuple[TensorSpec | Any, ...]  # per positional argument
    channel: tuple[int, int, int] | None  # (arg index, dim, axis index) of the input's channel dim
    conds: tuple[tuple[int, int], ...]  # alive when values[hp] > child index, for each pair
    signature: str = ""
    hp_positions: dict[int, list[int]] = field(default_factory=dict)  # space hp index -> _dyn_hparams() slots

    def value(self, axis: Axis, values: Sequence[int]) -> int:
        return sum(values[i] * r for i, r in axis.terms)

    def key(self, values: Sequence[int]) -> tuple[int, ...]:
        """The axis tuple of the subnet with hparam ``values``."""
        return tuple(sum(values[i] * r for i, r in axis.terms) for axis in self.axes)

    def alive(self, values: Sequence[int]) -> bool:
        return all(values[h] > c for h, c in self.conds)

    def independent(self) -> bool:
        """True when no hparam drives two axes (then every combination of axis values is reachable)."""
        seen: set[int] = set()
        for axis in self.axes:
            hps = {i for i, _ in axis.terms}
            if hps & seen:
                return False
            seen |= hps
        return True

    def axis_values(self, hps: Sequence[Hparam]) -> list[dict[int, dict[int, int]]]:
        """Per axis: each reachable value -> one hparam assignment giving it."""
        out = []
        for axis in self.axes:
            states: dict[int, dict[int, int]] = {0: {}}
            for i, r in axis.terms:
                states = {
                    total + c * r: {**assign, i: c}
                    for total, assign in states.items()
                    for c in ((assign[i],) if i in assign else hps[i].choices)
                }
            out.append(dict(sorted(states.items())))
        return out

    def tuples(self, hps: Sequence[Hparam]) -> dict[tuple[int, ...], dict[int, int]]:
        """Every reachable axis tuple -> one hparam assignment giving it (dependent axes enumerated)."""
        per_axis = self.axis_values(hps)
        if self.independent():
            out: dict[tuple[int, ...], dict[int, int]] = {}
            for combo in itertools.product(*(a.items() for a in per_axis)):
                out[tuple(v for v, _ in combo)] = {k: c for _, assign in combo for k, c in assign.items()}
            return out
        involved = sorted({i for axis in self.axes for i, _ in axis.terms})
        states: dict[tuple[int, ...], dict[int, int]] = {(0,) * len(self.axes): {}}
        for i in involved:
            repeats = [sum(r for j, r in axis.terms if j == i) for axis in self.axes]
            states = {
                tuple(t + c * rep for t, rep in zip(total, repeats)): {**assign, i: c}
                for total, assign in states.items()
                for c in hps[i].choices
            }
            if len(states) > _MAX_ENUMERATED:
                raise SearchSpaceError(
                    f"layer {self.name!r} can run at more than {_MAX_ENUMERATED} width combinations whose "
                    "channel groups are shared between its dimensions; the latency model cannot tabulate "
                    "it. Freeze some of its channel groups (frozen_modules) or widen the divisor"
                )
        return dict(sorted(states.items()))

    def make_variant(self, key: tuple[int, ...], assign: Mapping[int, int], template: DynamicModule,
                     buffers: Mapping[str, torch.Tensor], inputs: Sequence[Any]) -> Callable[[], Any]:
        """A callable running the exported layer at axis tuple ``key``, reached by the hparam values
        ``assign`` (see the module doc); ``buffers`` and ``inputs`` are the full-size real tensors."""
        variant = copy.deepcopy(template)
        slots = variant._dyn_hparams()
        for index, value in assign.items():
            for pos in self.hp_positions.get(index, ()):
                slots[pos].active = value
        export_model(variant)
        for kind in ("_parameters", "_buffers"):
            tensors = getattr(variant, kind)
            for name, t in list(tensors.items()):
                if t is None:
                    continue
                real = buffers[f"{kind}.{name}"][: t.numel()].view(t.shape)
                tensors[name] = nn.Parameter(real, requires_grad=False) if kind == "_parameters" else real
        args = list(inputs)
        if self.channel is not None:
            arg, dim, axis = self.channel
            shape = list(args[arg].shape)
            shape[dim] = key[axis]
            args[arg] = inputs[arg].reshape(-1)[: math.prod(shape)].view(shape)
        return lambda: variant(*args)


def _meta_template(module: DynamicModule) -> DynamicModule:
    """A deep copy of ``module`` with every parameter and buffer on the ``meta`` device (no data copied)."""
    memo: dict[int, Any] = {}
    for t in (*module._parameters.values(), *module._buffers.values()):
        if t is not None:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def _channel_dim(module: nn.Module, shape: Sequence[int], full: int) -> int | None:
    """Which dim of the layer's input carries the channels (None when no dim has ``full`` entries)."""
    matching = [d for d, s in enumerate(shape) if s == full]
    if not matching:
        return None
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        preferred = len(shape) - 1
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        preferred = 1 if len(shape) >= 2 else 0
    else:
        preferred = matching[-1]
    return preferred if preferred in matching else matching[-1]


def _code_hash(cls: type) -> str:
    code = getattr(getattr(cls, "forward", None), "__code__", None)
    if code is None:
        return ""
    return hashlib.sha256(code.co_code + repr((code.co_consts, code.co_names)).encode()).hexdigest()[:16]


def signature_of(plain: nn.Module, unit: Unit) -> str:
    """The unit's cache signature: class, hyperparameters, tensor and input shapes at the max widths,
    and how its axes map onto them."""
    cls = type(plain)
    tensors = ",".join(
        f"{kind[1]}{name}:{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        for kind, group in (("_p", plain._parameters), ("_b", plain._buffers))
        for name, t in group.items()
        if t is not None
    )
    inputs = ",".join(repr(spec) for spec in unit.inputs)
    axes = ",".join(a.name for a in unit.axes)
    return (f"{cls.__module__}.{cls.__qualname__}({plain.extra_repr()}) forward={_code_hash(cls)} "
            f"tensors=[{tensors}] inputs=[{inputs}] axes=[{axes}] channel={unit.channel}")


def _input_role(module: DynamicModule) -> str | None:
    dims = module.__dict__["_dyn_dims"]
    for role in ("in", "features"):
        if role in dims:
            return role
    return next(iter(dims)) if len(dims) == 1 else None


def collect_units(
    space: Any, hparams: Sequence[Hparam], blocks: Mapping[str, tuple[int, int]],
    calls: Mapping[str, list[tuple[Any, ...]]],
) -> list[Unit]:
    """The units of ``space`` given the recorded positional arguments of each leaf's calls (tensors as
    :class:`TensorSpec`); ``blocks`` maps droppable block names to their ``(depth hparam, child index)``."""
    index = {id(hp): i for i, hp in enumerate(hparams)}
    dynamic = space.dynamic_modules()
    parents = {n for n in dynamic for other in dynamic if other != n and other.startswith(n + ".") if n}
    units = []
    for name, module in dynamic.items():
        if isinstance(module, DynamicSequential) or name in parents or name not in calls:
            continue
        dims = module.__dict__["_dyn_dims"]
        axes = [Axis(role, tuple((index[id(hp)], r) for hp, r in b.segments)) for role, b in dims.items()]
        axes += [Axis("kernel", ((index[id(hp)], 1),)) for hp in module._dyn_extra_hparams()]
        positions: dict[int, list[int]] = {}
        for pos, hp in enumerate(module._dyn_hparams()):
            positions.setdefault(index[id(hp)], []).append(pos)
        conds = tuple(c for b, c in blocks.items() if name == b or name.startswith(b + "."))
        role = _input_role(module)
        for k, args in enumerate(calls[name]):
            channel = None
            if role is not None and args and isinstance(args[0], TensorSpec):
                full = dims[role].full
                dim = _channel_dim(module, args[0].shape, full)
                if dim is not None:
                    channel = (0, dim, [a.name for a in axes].index(role))
            label = name if len(calls[name]) == 1 else f"{name}#{k}"
            units.append(Unit(label, module, tuple(axes), tuple(args), channel, conds, hp_positions=positions))
    return units
