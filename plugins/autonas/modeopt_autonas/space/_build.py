"""Turning a ``SpaceStructure`` plus per-module rules into hparams and dynamic modules (private)."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import torch
from torch import nn

from modeopt_core import ConfigError

from .dynamic import (
    DimBinding,
    DynamicBlock,
    DynamicModule,
    DynamicSequential,
    DynamicTensors,
    DynamicTensorsBlock,
    kernel_size_choices,
)
from .dynamic.thirdparty import register_loaded
from .errors import SearchSpaceError, StructureMismatchError
from .hparam import Hparam, make_divisible
from .layers import LAYERS
from .structure import ATTR_ROLE_PREFIX, ROLES, TENSOR_ROLE_PREFIX, Binding, SpaceStructure, is_follower, is_role

_log = logging.getLogger(__name__)

RulesFn = Callable[[str, nn.Module], Mapping[str, Any] | None]
_ROLE_PRIORITY = {"out": 0, "features": 1, "in": 2}
_TENSOR_PRIORITY = 3  # tensor roles name a group only when nothing else does


@dataclass(frozen=True)
class Member:
    """One place a channel group lives: a segment of one module dimension."""

    module: str
    role: str
    offset: int  # first feature of the segment in the (full-width) dimension
    repeat: int
    size: int  # channels of the group


@dataclass
class Built:
    """What the builder produced, for ``SearchSpace``."""

    hparams: dict[str, Hparam]  # every hparam (also non-configurable), in a stable order
    group_hparams: dict[int, Hparam]
    members: dict[int, list[Member]]
    depth_hparams: dict[str, Hparam]  # sequential name -> depth hparam
    frozen: dict[str, str]  # hparam name -> why it is not configurable
    dynamic: dict[str, DynamicModule] = field(default_factory=dict)
    #: every child of a depth container -> (hparam, index): it runs while the hparam's value > index
    blocks: dict[str, tuple[Hparam, int]] = field(default_factory=dict)


def _dynamic_class(module: nn.Module) -> type[DynamicModule] | None:
    # bound modules only: the analysis read the forward of a subclass that overrides it (``verified``)
    return cast("type[DynamicModule] | None", LAYERS.dynamic_class(module, verified=True))


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    t = module._parameters.get(name)
    return module._buffers.get(name) if t is None else t


def _check_tensors(b: Binding, m: nn.Module, width: int) -> None:
    for tname, dim in b.tensors:
        t = _tensor(m, tname)
        if t is None:
            _fail(f"binding {b.module!r}/{b.role} slices tensor {tname!r}, which the module does not have")
        if not -t.ndim <= dim < t.ndim or t.shape[dim] != width:
            _fail(f"binding {b.module!r}/{b.role} slices dim {dim} of {tname!r} {tuple(t.shape)} to {width} features")


def _qualified(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _fail(msg: str) -> NoReturn:
    raise StructureMismatchError(msg + "; rebuild the structure for this model (or fix the structure data)")


def _validate(model: nn.Module, structure: SpaceStructure, modules: dict[str, nn.Module]) -> None:
    for name, m in modules.items():
        if isinstance(m, DynamicModule):
            raise SearchSpaceError(
                f"module {name or '<root>'!r} is already converted to a search space; build the space on "
                "an unconverted model (or export the existing space first)"
            )
    sizes = {}
    for g in structure.groups:
        if g.id in sizes:
            _fail(f"channel group id {g.id} appears twice")
        if g.size < 1:
            _fail(f"channel group {g.id} has size {g.size}")
        sizes[g.id] = g.size
    seen: set[tuple[str, str]] = set()
    for b in structure.bindings:
        if b.module not in modules:
            _fail(f"binding names module {b.module!r}, which the model does not have")
        if not is_role(b.role):
            _fail(f"binding of {b.module!r} has unknown role {b.role!r} (expected one of {ROLES} or 'tensor:<name>')")
        if (b.module, b.role) in seen:
            _fail(f"module {b.module!r} has two bindings for role {b.role!r}")
        seen.add((b.module, b.role))
        if not b.segments:
            _fail(f"binding {b.module!r}/{b.role} has no segments")
        for s in b.segments:
            if s.group not in sizes:
                _fail(f"binding {b.module!r}/{b.role} refers to unknown channel group {s.group}")
            if s.repeat < 1:
                _fail(f"binding {b.module!r}/{b.role} has repeat {s.repeat} < 1")
        m = modules[b.module]
        width = sum(sizes[s.group] * s.repeat for s in b.segments)
        if b.role.startswith(TENSOR_ROLE_PREFIX):
            if not b.tensors:
                _fail(f"tensor binding {b.module!r}/{b.role} names no tensor")
            _check_tensors(b, m, width)
            continue
        if b.role.startswith(ATTR_ROLE_PREFIX):
            attr = b.role.removeprefix(ATTR_ROLE_PREFIX)
            value = m.__dict__.get(attr)
            if type(value) is not int or value != width:
                _fail(f"attribute binding {b.module!r}/{b.role}: {attr} is {value!r}, not the width {width}")
            continue
        dyn = _dynamic_class(m)
        if dyn is None:
            continue
        layout = dyn.dynamic_layout(m)
        if b.role not in layout:
            _fail(f"{type(m).__name__} {b.module!r} has no {b.role!r} dimension (has {sorted(layout)})")
        full = dyn.dynamic_full_width(m, b.role)
        if width != full:
            _fail(f"binding {b.module!r}/{b.role} spans {width} features but the module has {full}")
        _check_tensors(b, m, width)
    for name, m in modules.items():
        spec = LAYERS.spec(m, verified=True)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and spec and not spec.frozen_reason:
            ins = [b for b in structure.bindings if b.module == name and b.role == "in"]
            outs = [b for b in structure.bindings if b.module == name and b.role == "out"]
            if (ins or outs) and (not ins or not outs or ins[0].segments != outs[0].segments):
                _fail(f"grouped conv {name!r} must bind 'in' and 'out' to the same channel groups")
    depth_seen = set()
    for d in structure.depth:
        seq = modules.get(d.module)
        plain_sequential = isinstance(seq, nn.Sequential) and type(seq).forward is nn.Sequential.forward
        if not plain_sequential and not (d.blocks and type(seq) is nn.ModuleList):
            _fail(f"depth spec names {d.module!r}, which is not an nn.Sequential (without its own forward) "
                  "or, for a block list, an nn.ModuleList")
        if d.module in depth_seen:
            _fail(f"depth spec for {d.module!r} appears twice")
        depth_seen.add(d.module)
        size = len(seq._modules) if seq is not None else 0
        bad = [i for i in d.skippable if not 0 <= i < size]
        if bad:
            _fail(f"depth spec of {d.module!r} marks children {bad} skippable but it has {size} children")


def _ratios(rule: Mapping[str, Any], key: str, where: str) -> list[float] | None:
    ratios = rule.get(key)
    if ratios is None:
        return None
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        raise ConfigError(f"rule {where}.{key} must be a list of numbers in (0, 1], got {ratios!r}") from None
    if any(not 0 < r <= 1 for r in values):
        raise ConfigError(f"rule {where}.{key} must hold ratios in (0, 1], got {ratios!r}")
    return values


def _positive_int(rule: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"rule {where}.{key} must be a non-negative int, got {value!r}")
    return value


def _group_hparam(
    gid: int, size: int, reason: str, members: list[tuple[Binding, nn.Module, int]], rule_of: dict[str, Any]
) -> tuple[Hparam, str]:
    """The hparam of one channel group; ``members``: ``(binding, module, repeat)`` per segment of the group."""
    reasons = [reason] if reason else []
    allowed: set[int] | None = None
    multiples: set[int] = set()
    sortable = True
    # features per channel wherever the group lives (attention heads: head_dim; 1 for plain channels)
    unit = math.gcd(*(r for b, _, r in members if not is_follower(b.role) and (b.role in ROLES or r > 1)))
    for b, m, repeat in members:
        if is_follower(b.role):
            continue  # a tensor or attribute follows the group's layers: it adds no rule and no constraint
        dyn, record = _dynamic_class(m), LAYERS.layer_type(m, verified=True)
        spec = None if record is None else record.spec(m)
        if dyn is None or record is None or spec is None:
            reasons.append(f"{b.module} ({type(m).__name__}) has no dynamic class")
            continue
        if spec.frozen_reason:
            reasons.append(f"{b.module}: {spec.frozen_reason}")
        sortable = sortable and spec.sortable
        if spec.multiple_of > 1:
            multiples.add(spec.multiple_of)
        if b.role not in ROLES and repeat == 1:
            continue  # a composite layer's own dim with one entry per channel (a per-head table) is no width
        rule = rule_of[b.module]
        if rule is None:
            reasons.append(f"{b.module} is frozen by the rules")
            continue
        ratio_key, divisor_key = record.rule_keys
        ratios = _ratios(rule, ratio_key, b.module)
        if ratios is None:
            continue
        divisor = max(1, _positive_int(rule, divisor_key, b.module, 1))
        # the divisor counts features: where every channel is ``unit`` features (a head), fewer channels do
        divisor //= math.gcd(divisor, unit or 1)
        # Optional rule key (FastNAS): a narrow group keeps at least this many multiples of the
        # divisor, which is halved until it does (divisor 32 would leave a 32-wide layer one width).
        min_steps = _positive_int(rule, "min_width_steps", b.module, 0)
        while divisor > 1 and size < min_steps * divisor:
            divisor //= 2
        candidates = {make_divisible(r * size, divisor, size) for r in ratios} | {size}
        allowed = candidates if allowed is None else allowed & candidates
    if allowed is None and not reasons:
        reasons.append("no member's rule gives ratios")
    choices = {size} if reasons or allowed is None else allowed
    for mult in sorted(multiples):
        if size % mult:
            # e.g. one input of a concatenation feeding a grouped conv straddles its channel groups:
            # narrowing it would move channels between the conv's groups
            reasons.append(f"width {size} is not a multiple of {mult}")
            choices = {size}
        choices = {c for c in choices if c % mult == 0}
    choices.add(size)
    if len(choices) == 1 and not reasons:
        reasons.append("the rules leave a single width")
    return Hparam(choices, size, sortable=sortable), "; ".join(reasons)


def _head_name(entries: list[tuple[Binding, int, int]]) -> str | None:
    """``<attention module>.heads`` (or ``.kv_heads`` for grouped-query attention) for a group whose every
    layer member spans several features per channel: attention heads of ``head_dim`` features."""
    layers = [(b, b.segments[i].repeat) for b, i, _ in entries if not is_follower(b.role)]
    # a composite layer's own per-head tensor (a relative position bias table: one entry per head) may
    # have one feature per channel; the layer roles must all span several
    spanning = [(b, r) for b, r in layers if r > 1 or b.role in ROLES]
    if not spanning or any(r == 1 for _, r in spanning) or any(b.role == "features" for b, _ in layers):
        return None
    parts = [b.module.split(".") for b, _ in layers]
    common = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    if len({b.module for b, _ in layers}) == 1:  # one module (a fused projection): name its parent
        common = common[:-1]
    repeats = {r for _, r in spanning}
    return _qualified(".".join(common), "heads" if len(repeats) == 1 else "kv_heads")


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _priority(role: str) -> int:
    return _ROLE_PRIORITY.get(role, _TENSOR_PRIORITY)


def _uniform(
    named: list[tuple[tuple, str, Hparam, str]], group_hp: dict[int, Hparam], structure: SpaceStructure,
    modules: dict[str, nn.Module],
) -> None:
    """Share one hparam between the groups that play the same part in every block of a block list (the
    same name up to the block: ``layers.*.mlp.up_proj.out_features``); its choices are the common ones."""
    prefixes = []
    for d in structure.depth:
        if d.blocks:
            for key in modules[d.module]._modules:
                prefixes.append((_qualified(d.module, key) + ".", _qualified(d.module, "*") + "."))
    by_id = {id(hp): gid for gid, hp in group_hp.items()}
    shared: dict[str, int] = {}  # signature -> index in named of the hparam kept
    drop: set[int] = set()
    for i, (_, name, hp, _) in enumerate(named):
        gid = by_id.get(id(hp))
        prefix = next(((p, star) for p, star in prefixes if name.startswith(p)), None)
        if gid is None or prefix is None:
            continue
        signature = prefix[1] + name[len(prefix[0]):]
        if signature not in shared:
            shared[signature] = i
            named[i] = (named[i][0], signature, hp, named[i][3])
            continue
        keep = named[shared[signature]][2]
        if hp.original != keep.original:
            continue  # different widths (not the same part after all): stays separate
        keep.restrict(hp.choices)
        group_hp[gid] = keep
        drop.add(i)
    named[:] = [e for i, e in enumerate(named) if i not in drop]


def build(model: nn.Module, structure: SpaceStructure, rules: RulesFn, *, uniform: bool = False) -> Built:
    """Validate everything, then create hparams and convert modules in place.

    Args:
        uniform: one width per part of the blocks of each block list (every layer gets the same heads and
            MLP width): what a Hugging Face config can describe.
    """
    register_loaded()
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    _validate(model, structure, modules)

    ruled = sorted(
        {b.module for b in structure.bindings if not is_follower(b.role)}
        | {d.module for d in structure.depth},
        key=lambda n: order[n],
    )
    rule_of: dict[str, Any] = {}
    for name in ruled:
        rule = rules(name, modules[name])
        if rule is not None and not isinstance(rule, Mapping):
            raise ConfigError(f"rules({name!r}) must return a dict or None, got {type(rule).__name__}")
        rule_of[name] = rule

    groups = {g.id: g for g in structure.groups}
    by_group: dict[int, list[tuple[Binding, int, int]]] = {gid: [] for gid in groups}
    for b in structure.bindings:
        offset = 0
        for i, s in enumerate(b.segments):
            by_group[s.group].append((b, i, offset))
            offset += groups[s.group].size * s.repeat

    named: list[tuple[tuple, str, Hparam, str]] = []  # (sort key, name, hparam, frozen reason)
    group_hp: dict[int, Hparam] = {}
    members: dict[int, list[Member]] = {}
    for gid, g in groups.items():
        entries = by_group[gid]
        hp, reason = _group_hparam(
            gid,
            g.size,
            "" if g.searchable else (g.reason or "frozen by the analysis"),
            [(b, modules[b.module], b.segments[i].repeat) for b, i, _ in entries],
            rule_of,
        )
        group_hp[gid] = hp
        members[gid] = [Member(b.module, b.role, off, b.segments[i].repeat, g.size) for b, i, off in entries]
        if not entries:
            named.append(((len(order), 1, gid), f"group{gid}", hp, reason or "not bound to any module"))
            continue
        b, i, _ = min(entries, key=lambda e: (_priority(e[0].role), order[e[0].module], e[1]))
        dyn = None if is_follower(b.role) else _dynamic_class(modules[b.module])
        if dyn is not None:
            attr = dyn.dynamic_roles.get(b.role, b.role)
        else:  # a follower's tensor/attribute name, or the role of a module without a dynamic class
            attr = b.role.split(":", 1)[1] if is_follower(b.role) else b.role
        name = _head_name(entries) or _qualified(b.module, attr) + (f".{i}" if len(b.segments) > 1 else "")
        named.append(((order[b.module], 1, _priority(b.role), i), name, hp, reason))

    if uniform:
        _uniform(named, group_hp, structure, modules)

    kernel_hp: dict[str, Hparam] = {}
    for mname in ruled:
        m, rule = modules[mname], rule_of[mname]
        if not isinstance(m, nn.modules.conv._ConvNd) or rule is None or _dynamic_class(m) is None:
            continue
        wanted = rule.get("kernel_size")
        if not wanted:
            continue
        kernels, why = kernel_size_choices(m, list(wanted))
        if why:
            _log.info("kernel-size search of %s: %s", mname, why)
        if len(kernels) > 1:
            kernel_hp[mname] = Hparam(kernels, m.kernel_size[0])
            named.append(((order[mname], 2), _qualified(mname, "kernel_size"), kernel_hp[mname], ""))

    depth_hp: dict[str, Hparam] = {}
    blocks: dict[str, tuple[Hparam, int]] = {}  # droppable child -> (hparam, index): kept while hparam > index
    for d in structure.depth:
        seq, rule = modules[d.module], rule_of[d.module]
        keys = list(seq._modules)
        n = len(keys)
        reason = "frozen by the rules" if rule is None else ""
        if d.blocks and rule is not None and rule.get("drop_blocks", True):
            for i in d.skippable:  # each block on its own: a searcher picks which ones to drop
                child = _qualified(d.module, keys[i])
                frozen_block = any(fnmatch.fnmatchcase(child, g) for g in rule.get("frozen_blocks", ()))
                hp = Hparam({1} if frozen_block else {0, 1}, 1)
                blocks[child] = (hp, 0)
                named.append(((order[child], 0), _qualified(child, "keep"), hp, "frozen by frozen_blocks"))
            continue
        choices = {n}
        if rule is not None:
            min_depth = _positive_int(rule, "min_depth", d.module, 0)
            skippable = set(d.skippable)
            choices |= {k for k in range(min_depth, n) if all(i in skippable for i in range(k, n))}
            if len(choices) == 1:
                reason = "no trailing run of skippable children above min_depth"
        depth_hp[d.module] = Hparam(choices, n)
        named.append(((order[d.module], 0), _qualified(d.module, "depth"), depth_hp[d.module], reason))
        for i, key in enumerate(keys):
            blocks[_qualified(d.module, key)] = (depth_hp[d.module], i)

    named.sort(key=lambda e: e[0])
    hparams: dict[str, Hparam] = {}
    frozen: dict[str, str] = {}
    for _, name, hp, reason in named:
        while name in hparams:  # only possible for odd hand-made structures
            name += "_"
        hp.name = name
        hparams[name] = hp
        if not hp.is_configurable:
            frozen[name] = reason or "single choice"

    built = Built(hparams, group_hp, members, depth_hp, frozen, blocks=blocks)
    _convert(modules, structure, built, kernel_hp)
    return built


def _convert(
    modules: dict[str, nn.Module], structure: SpaceStructure, built: Built, kernel_hp: dict[str, Hparam]
) -> None:
    bindings: dict[str, list[Binding]] = {}
    for b in structure.bindings:
        bindings.setdefault(b.module, []).append(b)
    for name, m in modules.items():
        own = bindings.get(name, [])
        kernel = kernel_hp.get(name)
        needed = kernel is not None or any(
            built.group_hparams[s.group].is_configurable for b in own for s in b.segments
        )
        block = built.blocks.get(name)
        container_depth = built.depth_hparams.get(_parent(name))
        sequential_depth = container_depth is not None and isinstance(modules.get(_parent(name)), nn.Sequential)
        droppable = block is not None and block[0].is_configurable and not (
            sequential_depth and block[0] is container_depth)
        if needed:
            layered = any(not is_follower(b.role) for b in own) or kernel is not None
            if droppable and layered:
                raise SearchSpaceError(f"block {name!r} is also a searchable layer; it cannot be dropped as a block")
            dyn = _dynamic_class(m) if layered else DynamicTensorsBlock if droppable else DynamicTensors
            assert dyn is not None  # groups touching modules without one are frozen
            dims = {b.role: DimBinding([(built.group_hparams[s.group], s.repeat) for s in b.segments]) for b in own}
            tensors = {b.role: b.tensors for b in own if b.tensors}
            extra: dict[str, Any] = {"kernel": kernel} if kernel is not None else {}
            if droppable and not layered:  # a block holding tensors of the stream (layer scale) and droppable
                assert block is not None
                extra.update(keep=block[0], index=block[1])
            built.dynamic[name] = cast(DynamicModule, dyn.convert(m, dims, tensors, **extra))
        depth = built.depth_hparams.get(name)
        if depth is not None and depth.is_configurable and isinstance(m, nn.Sequential):
            built.dynamic[name] = cast(DynamicModule, DynamicSequential.convert(m, {}, depth=depth))
        if droppable and name not in built.dynamic:
            assert block is not None
            built.dynamic[name] = cast(DynamicModule, DynamicBlock.convert(m, {}, keep=block[0], index=block[1]))
