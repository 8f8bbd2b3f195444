"""Timed units: one per call of a searchable layer in a forward pass, with the widths it can run at.

A *unit* is one call of a dynamic leaf module (a conv, linear or norm layer that no other dynamic
module contains) during a forward pass on the dummy input at the max subnet, or of a plain leaf
module inside a droppable block (its widths are fixed, but it runs only while its block does). Its cost is a function
of its *axes*: the active width of each bound dimension (``in``/``out``/``features``, each a sum of
channel-group widths) and its extra hparams (kernel size). Everything else about the call (layer
class and hyperparameters, the input's shape apart from its channel dim, dtype) is fixed and goes
into the unit's *signature*, so identical layers (ResNet's repeated 3x3 convs) share measurements.

A *variant* is the exported plain layer at one axis tuple, built without copying weights: the
dynamic module is cloned once onto the ``meta`` device (the *template*), narrowed, and exported as a
new plain module whose tensors are contiguous views of the first elements of the real (flattened)
tensors, as is its input. Timing a
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

from ..dynamic import DynamicBlock, DynamicModule, DynamicSequential
from ..errors import SearchSpaceError
from ..hparam import Hparam

__all__ = ["Axis", "TensorSpec", "Unit", "collect_units", "exported_view", "signature_of", "timed_modules"]

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
    module: nn.Module  # a DynamicModule, or a plain module inside a droppable block (no axes)
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

    def make_variant(self, key: tuple[int, ...], assign: Mapping[int, int], template: nn.Module,
                     buffers: Mapping[str, torch.Tensor], inputs: Sequence[Any]) -> Callable[[], Any]:
        """A callable running the exported layer at axis tuple ``key``, reached by the hparam values
        ``assign`` (see the module doc); ``buffers`` and ``inputs`` are the full-size real tensors.
        A plain module (fixed widths, inside a droppable block) runs as a shallow eval-mode copy."""
        if isinstance(template, DynamicModule):
            slots = template._dyn_hparams()
            for index, value in assign.items():
                for pos in self.hp_positions.get(index, ()):
                    slots[pos].active = value
            variant = exported_view(template, buffers)
        else:
            variant = copy.copy(template)
            variant.training = False
        args = list(inputs)
        if self.channel is not None:
            arg, dim, axis = self.channel
            shape = list(args[arg].shape)
            shape[dim] = key[axis]
            args[arg] = inputs[arg].reshape(-1)[: math.prod(shape)].view(shape)
        return lambda: variant(*args)


def exported_view(template: DynamicModule, buffers: Mapping[str, torch.Tensor]) -> nn.Module:
    """What exporting ``template`` (a meta-device copy) at its active subnet gives, as a new plain module
    whose tensors are views of ``buffers`` (``"_parameters.<name>"``/``"_buffers.<name>"``, flattened).

    The same steps as ``DynamicModule._dyn_export`` (original class, plan attributes, active tensor
    shapes, ``dynamic_after_export``) on a shallow copy, so one template serves every width.
    """
    plan = template._dyn_sync()
    d = template.__dict__
    plain = object.__new__(d["_dyn_original_cls"])
    state = {k: v for k, v in d.items() if not k.startswith("_dyn_")}
    for kind in ("_parameters", "_buffers"):
        views: dict[str, Any] = {}
        for name, t in d[kind].items():
            if t is None:
                views[name] = None
                continue
            ix = plan.tensors.get(name)
            shape = ix(t).shape if ix is not None else t.shape
            real = buffers[f"{kind}.{name}"][: math.prod(shape)].view(shape)
            views[name] = nn.Parameter(real, requires_grad=False) if kind == "_parameters" else real
        state[kind] = views
    plain.__dict__.update(state)
    plain.__dict__.update(plan.attrs)
    type(template).dynamic_after_export(plain, plan.attrs)
    plain.training = False  # its tensors are views of the model's: a training-mode norm would update them
    return plain


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
    and how its axes map onto them. ``plain`` is the unit's module with the space at its max subnet (a
    dynamic module then shows its original attributes and full tensors; its original class is named)."""
    cls = plain.__dict__.get("_dyn_original_cls", type(plain))
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


def timed_modules(space: Any, blocks: Mapping[str, tuple[int, int]]) -> dict[str, nn.Module]:
    """The modules timed as units: dynamic leaf layers (no dynamic module inside), and the plain leaf
    modules inside droppable blocks (their cost disappears with the block, so it cannot be a constant)."""
    dynamic = space.dynamic_modules()
    names = sorted(dynamic)
    parents = {a for a, b in itertools.pairwise(names) if a and b.startswith(a + ".")}
    out: dict[str, nn.Module] = {
        # containers (a droppable block is one even when no layer inside it is searchable) are not units
        n: m for n, m in dynamic.items() if not isinstance(m, (DynamicSequential, DynamicBlock)) and n not in parents
    }
    for block in blocks:
        for sub, module in space.model.get_submodule(block).named_modules(prefix=block):
            if sub not in dynamic and not module._modules and not isinstance(module, DynamicModule):
                out[sub] = module
    return out


def collect_units(
    space: Any, hparams: Sequence[Hparam], blocks: Mapping[str, tuple[int, int]],
    calls: Mapping[str, list[tuple[Any, ...]]],
) -> list[Unit]:
    """The units of ``space`` given the recorded positional arguments of each timed module's calls
    (tensors as :class:`TensorSpec`); ``blocks`` maps droppable block names to their ``(depth hparam,
    child index)``."""
    index = {id(hp): i for i, hp in enumerate(hparams)}
    units = []
    for name, module in timed_modules(space, blocks).items():
        if name not in calls:
            continue
        conds = tuple(c for b, c in blocks.items() if name == b or name.startswith(b + "."))
        axes: list[Axis] = []
        positions: dict[int, list[int]] = {}
        role = None
        if isinstance(module, DynamicModule):
            dims = module.__dict__["_dyn_dims"]
            axes = [Axis(r, tuple((index[id(hp)], rep) for hp, rep in b.segments)) for r, b in dims.items()]
            axes += [Axis("kernel", ((index[id(hp)], 1),)) for hp in module._dyn_extra_hparams()]
            for pos, hp in enumerate(module._dyn_hparams()):
                positions.setdefault(index[id(hp)], []).append(pos)
            role = _input_role(module)
        for k, args in enumerate(calls[name]):
            channel = None
            if role is not None and args and isinstance(args[0], TensorSpec):
                dim = _channel_dim(module, args[0].shape, module.__dict__["_dyn_dims"][role].full)
                if dim is not None:
                    channel = (0, dim, [a.name for a in axes].index(role))
            label = name if len(calls[name]) == 1 else f"{name}#{k}"
            units.append(Unit(label, module, tuple(axes), tuple(args), channel, conds, hp_positions=positions))
    return units
