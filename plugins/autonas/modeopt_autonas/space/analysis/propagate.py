"""One topological pass over an fx graph that ties channel dims into groups.

Rules (each node gets an abstract value: channels at some dim, opaque, a number, ...):

* **Registered layers** (a ``LayerSpec`` in the registry). ``producer`` (conv, linear): its ``in``
  dim is bound to the input's channel segments, its ``out`` dim to a new group (one per module,
  shared by repeated calls). ``passthrough`` (norms: ``features``; depthwise/grouped convs with
  in == out: ``in`` and ``out``): bound to the input's segments, which flow on unchanged. The
  input's channel dim must be the layer's ``in_dim`` and its width must match, otherwise the input's
  groups are frozen and the layer gets a fresh frozen group. (A last-dim channel of unknown rank
  meeting a dim-1 layer, e.g. ``Linear -> BatchNorm1d``, is taken to be an ``(N, C)`` tensor.) A
  spec with ``frozen_reason`` freezes every group of the layer.
* **Element-wise ops** (activations, dropout, identity, casts, stochastic depth, ...) pass values on.
  **Pooling/upsampling** pass channels on when the channel dim is not one of their spatial dims;
  **padding** when it does not pad the channel dim.
* **Broadcasting binary ops** (add/sub/mul/div/pow/max/min, operator and in-place forms): two
  channel operands whose channel dims line up are tied (a residual add, an SE ``x * s``); an
  operand of width 1 broadcasts (its group is frozen at 1). Numbers and parameters whose size is 1
  at the channel position pass; a parameter with the channel width there (e.g. a ``layer_scale``)
  would need slicing, so the group is frozen. An operand of unknown layout freezes the other
  (which keeps flowing, frozen). A concatenation combined with anything but the same segments
  freezes both (one group cannot be the sum of several).
* **Concatenation** along the channel dim makes the parts consecutive segments of the output
  (nested concats flatten); along another dim it ties the parts. A part of unknown layout freezes
  the others.
* **Layout ops** follow the channel dim: permute/transpose/unsqueeze/squeeze/getitem with full
  slices, mean/sum over other dims, ``flatten``/``view(N, -1)`` from the channel dim to the end (the
  consuming ``Linear`` infers the features per channel, ``Segment.repeat``), ``view(N, C, 1, 1)``.
  Splits along the channel dim (chunk/split/unbind), indexing of it, and other reshapes freeze.
* **Shape queries** (``.shape``, ``.size()``, ``.dim()``) have no effect. Reducing the channel dim
  (``mean(1)``) is width-independent and freezes nothing; the result simply has no channels.
* **Everything else** is a boundary: every group flowing in is frozen ("flows into <op>") and the
  output is opaque. Unregistered leaf modules (e.g. ``nn.MultiheadAttention``), user leaf globs and
  untraceable modules are boundaries too, as is the graph output ("model output", through
  tuples, dicts and namedtuples). An op that makes the analysis itself fail is a boundary too.
* A parameter of a registered layer read directly by the graph (weights used functionally) freezes
  that layer.
"""

from __future__ import annotations

import builtins
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..layers import LayerRegistry, LayerSpec
from . import composite, dispatch, layout
from .groups import GroupTable
from .ops import (
    META_ATTRS,
    PAD_MODULES,
    SHAPE_METHODS,
    SPATIAL_MODULES,
    elementwise_modules,
    is_static_function,
    module_class_in,
    op_name,
    spatial_dims,
)
from .tracer import TracedGraph
from .value_tracer import SHAPE_KEY
from .values import Chan, Derived, Opaque, Param, Static, Tup, Value, is_dim, is_tensor_like, param_sources, walk

__all__ = ["Context", "propagate"]

_log = logging.getLogger(__name__)


@dataclass
class Context:
    """State shared by the propagation of all graphs of one model."""

    layers: LayerRegistry
    leaf_globs: tuple[str, ...]
    frozen_globs: tuple[str, ...]
    failed: dict[str, str]
    table: GroupTable = field(default_factory=GroupTable)
    out_groups: dict[str, int] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)
    functional: dict[str, str] = field(default_factory=dict)  # layer -> why its weights are used directly
    opaque: dict[str, str] = field(default_factory=dict)  # module called as an opaque leaf -> what it is
    errors: list[str] = field(default_factory=list)

    def glob_match(self, name: str, globs: tuple[str, ...]) -> str | None:
        """The first glob matching ``name`` or one of its ancestors (a container glob covers its subtree)."""
        parts = name.split(".")
        for glob in globs:
            if any(fnmatch.fnmatchcase(".".join(parts[:i]), glob) for i in range(len(parts), 0, -1)):
                return glob
        return None

    def freeze(self, value: Value, reason: str) -> None:
        for chan in walk(value):
            for gid in chan.segs:
                self.table.freeze(gid, reason)


def _widths(module: nn.Module) -> tuple[int, int] | None:
    embedding_dim = getattr(module, "embedding_dim", None)
    if isinstance(embedding_dim, int):
        return 0, embedding_dim
    for a_in, a_out in (("in_channels", "out_channels"), ("in_features", "out_features"), ("nx", "nf")):
        if isinstance(getattr(module, a_in, None), int) and isinstance(getattr(module, a_out, None), int):
            return getattr(module, a_in), getattr(module, a_out)
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr), getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0]), int(shape[0])
    return None


class _GraphPass:
    def __init__(self, ctx: Context, traced: TracedGraph) -> None:
        self.ctx = ctx
        self.traced = traced
        self.env: dict[fx.Node, Value] = {}
        self.top = traced.scope == ""

    # -- helpers -------------------------------------------------------------------------------
    def val(self, arg: Any) -> Any:
        """fx argument -> value (Nodes resolved; tuples/lists of them become Tup)."""
        if isinstance(arg, fx.Node):
            return self.env.get(arg, Opaque("an unknown value"))
        if isinstance(arg, (list, tuple)):
            return Tup(tuple(self.val(a) for a in arg))
        if isinstance(arg, dict):  # only the values matter (outputs, kwargs containers)
            return Tup(tuple(self.val(a) for a in arg.values()))
        if isinstance(arg, slice):
            return arg
        return Static(arg)

    def raw(self, arg: Any) -> Any:
        """Like :meth:`val` but keeps Python containers (for index tuples)."""
        if isinstance(arg, fx.Node):
            return self.env.get(arg, Opaque("an unknown value"))
        if isinstance(arg, tuple):
            return tuple(self.raw(a) for a in arg)
        return arg

    def where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack")
        if stack:
            name = self.traced.qualify(next(reversed(stack.values()))[0])
            return f" in {name}" if name else ""
        return f" in {self.traced.scope}" if self.traced.scope else ""

    def desc(self, node: fx.Node) -> str:
        return op_name(node) + self.where(node)

    def arg(self, node: fx.Node, i: int, key: str, default: Any = None) -> Any:
        if len(node.args) > i:
            return node.args[i]
        return node.kwargs.get(key, default)

    def int_arg(self, node: fx.Node, i: int, key: str, default: Any = None) -> Any:
        a = self.arg(node, i, key, default)
        if isinstance(a, fx.Node):
            v = self.env.get(a)
            return v.value if isinstance(v, Static) else None
        return a

    def freeze(self, value: Value, reason: str) -> None:
        self.ctx.freeze(value, reason)

    def tie(self, a: Chan, b: Chan, op: str) -> None:
        table = self.ctx.table
        if len(a.segs) == 1 and len(b.segs) == 1:
            (ga,), (gb,) = a.segs, b.segs
            sa, sb = table.size(ga), table.size(gb)
            if sa != sb and 1 in (sa, sb):
                table.freeze(ga if sa == 1 else gb, f"width 1 broadcast against {max(sa, sb)} channels in {op}")
            else:
                table.union(ga, gb, f"in {op}")
            return
        # concatenations (or a concatenation and a producer's output): tied channel by channel
        table.union_seq(a.segs, b.segs, f"in {op}")

    def boundary(self, node: fx.Node) -> Value:
        values = [self.val(a) for a in node.args] + [self.val(v) for v in node.kwargs.values()]
        desc = self.desc(node)
        for chan in [c for v in values for c in walk(v)]:
            if chan.flat:
                self.freeze(chan, f"flows into torch.flatten (channels x spatial) consumed by {desc}")
            else:
                self.freeze(chan, f"flows into {desc}")
        if not any(is_tensor_like(v) for v in values) and (node.op == "call_method" or is_static_function(node.target)):
            return Static()
        derived = _derived(values)
        return derived if derived is not None else Opaque(f"output of {desc}")

    # -- node kinds ----------------------------------------------------------------------------
    def shape(self, arg: Any) -> tuple[int, ...] | None:
        """The shape of a tensor argument on the example input (traced with values), else None."""
        if isinstance(arg, fx.Node):
            shape = arg.meta.get(SHAPE_KEY)
            return shape if isinstance(shape, tuple) else None
        return None

    def _with_rank(self, node: fx.Node, value: Value) -> Value:
        """A channel value whose rank the example's shape tells (traced with values)."""
        shape = self.shape(node)
        if isinstance(value, Chan) and shape is not None and value.rank is None:
            index = value.index if value.index >= 0 else value.index + len(shape)
            if 0 <= index < len(shape):
                return Chan(value.segs, index, len(shape), value.flat)
        return value

    def run(self) -> None:
        for node in self.traced.graph.nodes:
            try:
                self.env[node] = self._with_rank(node, getattr(self, f"_{node.op}")(node))
            except Exception as exc:  # never let a surprising op abort the whole analysis
                msg = f"analysis error at {node.format_node()}: {type(exc).__name__}: {exc}"
                _log.warning("%s", msg)
                self.ctx.errors.append(msg)
                for a in [*node.args, *node.kwargs.values()]:
                    self.freeze(self.val(a), f"analysis error in {self.desc(node)}")
                self.env[node] = Opaque(f"output of {self.desc(node)}")

    def _placeholder(self, node: fx.Node) -> Value:
        if node.target in self.traced.concrete:
            return Static(self.traced.concrete[node.target])
        if self.top:
            return Opaque("model input")
        return Opaque(f"input of {self.traced.scope} (its parent is untraceable)")

    def _output(self, node: fx.Node) -> Value:
        reason = "model output" if self.top else f"output of {self.traced.scope} flows into its untraceable parent"
        self.freeze(self.val(node.args[0]), reason)
        return Static()

    def _get_attr(self, node: fx.Node) -> Value:
        target = str(node.target)
        if target in self.traced.constants:
            return Param(target, tuple(self.traced.constants[target].shape), constant=True)
        obj: Any = self.traced.root
        for part in target.split("."):
            obj = getattr(obj, part)
        name = self.traced.qualify(target)
        if isinstance(obj, torch.Tensor):
            owner_path, _, attr = target.rpartition(".")
            owner = self.traced.root.get_submodule(owner_path)
            if self.ctx.layers.lookup_class(type(owner)) is not None and not all(
                _is_metadata_use(u) for u in node.users
            ):
                owner_name = self.traced.qualify(owner_path)
                self.ctx.functional.setdefault(
                    owner_name, f"its {attr} is used directly (functionally){self.where(node)}"
                )
            return Param(name, tuple(obj.shape))
        if isinstance(obj, nn.Module):
            return Opaque(f"module {name} used as a value")
        return Static(obj)

    def _call_module(self, node: fx.Node) -> Value:
        rel = str(node.target)
        name = self.traced.qualify(rel)
        module = self.traced.root.get_submodule(rel) if rel else self.traced.root
        self.ctx.called.add(name)
        x = self.val(node.args[0]) if node.args else self.val(next(iter(node.kwargs.values()), None))
        extra = [self.val(a) for a in node.args[1:]] + [self.val(v) for v in node.kwargs.values()][
            0 if node.args else 1 :
        ]
        if name in self.ctx.failed:
            return self._opaque_module(node, name, f"untraceable module {name}: {self.ctx.failed[name]}")
        glob = self.ctx.glob_match(name, self.ctx.leaf_globs)
        if glob is not None:
            return self._opaque_module(node, name, f"user leaf module {name} (glob {glob!r})")
        if self.ctx.layers.lookup_class(type(module)) is not None:
            spec = self._composite_spec(module)
            if spec is not None:
                return composite.composite_layer(self, node, name, module, spec)
            for v in extra:
                self.freeze(v, f"passed as an extra argument to {name}")
            return self._layer(node, name, module, x)
        desc = f"{name} ({type(module).__name__})"
        if isinstance(module, nn.PReLU) and module.num_parameters != 1:
            self.freeze(x, f"flows into {desc} whose per-channel weights are not sliced")
            return x
        if module_class_in(module, elementwise_modules()) or isinstance(module, nn.PReLU):
            return x
        if module_class_in(module, SPATIAL_MODULES) and not getattr(module, "return_indices", False):
            return layout.spatial(self.freeze, x, spatial_dims(module), desc)
        if module_class_in(module, PAD_MODULES):
            padding: Any = getattr(module, "padding", ())
            return layout.pad(self.freeze, x, [Static(p) for p in padding], desc)
        if isinstance(module, nn.Flatten) and module_class_in(module, (nn.Flatten,)):
            return layout.flatten(self.freeze, x, module.start_dim, module.end_dim, desc)
        return self._opaque_module(node, name, f"opaque module {desc}")

    def _composite_spec(self, module: nn.Module) -> LayerSpec | None:
        """The spec of a layer that describes its own flow (attention), else None (also when it fails:
        ``_layer`` reports that)."""
        try:
            spec = self.ctx.layers.spec(module)
        except Exception:
            return None
        return spec if spec is not None and spec.composite else None

    def _opaque_module(self, node: fx.Node, name: str, what: str) -> Value:
        self.ctx.opaque.setdefault(name, what)
        for a in [*node.args, *node.kwargs.values()]:
            self.freeze(self.val(a), f"flows into {what}")
        return Opaque(f"output of {what}")

    def functional_layer(self, node: fx.Node, spec_name: str, positions: dict[str, int]) -> Value:
        """A functional layer op (``F.batch_norm``, ``F.conv2d``, ...) applied to one module's own tensors,
        inside that module's forward: the module is that layer (see ``ops.FUNCTIONAL_LAYERS``)."""
        x = self.val(self.arg(node, 0, "input"))
        sources: set[str] = set()
        for key, position in positions.items():
            value = self.val(self.arg(node, position, key))
            if isinstance(value, Static) and value.value is None:
                continue
            found = param_sources(value)
            if found is None or not found:
                return self.boundary(node)
            sources |= found
        owners = {src.rpartition(".")[0] for src in sources}
        stack = node.meta.get("nn_module_stack") or {}
        innermost = self.traced.qualify(next(reversed(stack.values()))[0]) if stack else self.traced.scope
        if len(owners) != 1 or innermost not in owners:
            return self.boundary(node)  # another module's tensors, or tensors of several modules
        (owner,) = owners
        module = self._module(owner)
        record = None if module is None else self.ctx.layers.layer_type(module, verified=True)
        if module is None or record is None or getattr(record.spec, "__name__", "") != spec_name:
            return self.boundary(node)
        dynamic = record.dynamic_class
        layout = dynamic.dynamic_layout(module) if dynamic is not None and hasattr(dynamic, "dynamic_layout") else {}
        known = {t for entries in layout.values() for t, _ in entries}
        extra = sorted({src.rpartition(".")[2] for src in sources} - known)
        return self._layer(node, owner, module, x, verified=True, extra=extra)

    def _module(self, qualified: str) -> nn.Module | None:
        scope = self.traced.scope
        rel = qualified if not scope else qualified[len(scope) + 1 :] if qualified.startswith(scope + ".") else None
        if rel is None and qualified != scope:
            return None
        try:
            return self.traced.root.get_submodule(rel or "")
        except AttributeError:
            return None

    def _layer(
        self, node: fx.Node, name: str, module: nn.Module, x: Value, *, verified: bool = False,
        extra: list[str] | None = None,
    ) -> Value:
        ctx, table = self.ctx, self.ctx.table
        try:
            spec = ctx.layers.spec(module, verified=verified)
        except Exception as exc:
            return self._opaque_module(node, name, f"layer {name} whose spec failed ({exc})")
        widths = _widths(module)
        if spec is None or widths is None:
            return self._opaque_module(node, name, f"layer {name} of unknown channel width")
        in_w, out_w = widths
        where = self.where(node)
        if spec.kind == "source":  # e.g. an embedding: token ids in, a fresh group of features out
            if name not in ctx.out_groups:
                ctx.out_groups[name] = table.new(out_w, producer=True)
            out_group = ctx.out_groups[name]
            table.bind(name, "out", [(out_group, 1)], where)
            glob = ctx.glob_match(name, ctx.frozen_globs)
            if glob is not None:
                table.freeze(out_group, f"frozen by user glob {glob!r}")
            return Chan((out_group,), spec.out_dim, None)
        if isinstance(x, Chan) and x.rank is None and {spec.in_dim, x.index} == {1, -1}:
            x = x.moved(x.index, 2)  # e.g. Linear -> BatchNorm1d on a tensor of unknown rank: (N, C)
        segs = self._input_segments(x, spec.in_dim, in_w, name, module)
        conv = isinstance(module, nn.modules.conv._ConvNd)
        rank = x.rank if isinstance(x, Chan) else (len(getattr(module, "kernel_size", ())) + 2 if conv else None)
        touched = [g for g, _ in segs]
        if spec.kind == "passthrough":
            for role in ("in", "out") if conv else ("features",):
                table.bind(name, role, segs, where)
            flat = isinstance(x, Chan) and x.flat
            out: Value = Chan(tuple(touched), spec.out_dim, None, flat).moved(spec.out_dim, rank)
        else:
            table.bind(name, "in", segs, where)
            if name not in ctx.out_groups:
                ctx.out_groups[name] = table.new(out_w, producer=True)
            out_group = ctx.out_groups[name]
            table.bind(name, "out", [(out_group, 1)], where, tensors=self._per_channel(module, extra, out_w))
            touched.append(out_group)
            out = Chan((out_group,), spec.out_dim, None).moved(spec.out_dim, rank)
        reasons = []
        if extra and spec.kind == "passthrough":
            reasons.append(f"{name}: its forward also uses {extra}, which a norm's channels cannot slice")
        elif extra and len(self._per_channel(module, extra, out_w)) != len(extra):
            reasons.append(f"{name}: its forward also uses {extra}, not all of them per output channel")
        if spec.frozen_reason:
            reasons.append(f"{name}: {spec.frozen_reason}")
        glob = ctx.glob_match(name, ctx.frozen_globs)
        if glob is not None:
            reasons.append(f"frozen by user glob {glob!r}")
        for reason in reasons:
            for gid in touched:
                table.freeze(gid, reason)
        return out

    @staticmethod
    def _per_channel(module: nn.Module, names: list[str] | None, width: int) -> tuple[tuple[str, int], ...]:
        """The extra tensors (e.g. ``gain`` of a scaled weight-standardised conv) that hold one entry per
        output channel along dim 0 and nothing else: they are sliced with the layer's ``out`` dim."""
        out = []
        for tname in names or ():
            t = module._parameters.get(tname, module._buffers.get(tname))
            if t is not None and t.ndim >= 1 and t.shape[0] == width and t.numel() == width:
                out.append((tname, 0))
        return tuple(out)

    def _input_segments(self, x: Value, in_dim: int, width: int, name: str, module: nn.Module) -> list[tuple[int, int]]:
        table = self.ctx.table

        def fresh(reason: str) -> list[tuple[int, int]]:
            return [(table.new(width, producer=False, reason=reason), 1)]

        if not isinstance(x, Chan):
            origin = x.origin if isinstance(x, Opaque) else (x.name if isinstance(x, Param) else "a non-tensor")
            return fresh(f"fed by {origin}")
        on = is_dim(x, in_dim)
        if not on:
            why = (
                f"cannot tell whether the channel dim is the input dim of {name} (unknown rank)"
                if on is None
                else f"the channel dim is not the input dim of {name}"
            )
            self.freeze(x, why)
            return fresh(why)
        total = sum(table.size(g) for g in x.segs)
        repeat = 1
        if x.flat:
            if isinstance(module, nn.modules.conv._ConvNd) or width % total:
                why = f"flows into torch.flatten (channels x spatial) consumed by {name}"
                self.freeze(x, why)
                return fresh(why)
            repeat = width // total
        if total * repeat != width:
            why = f"width mismatch: {total} channels flow into {name} which expects {width}"
            self.freeze(x, why)
            return fresh(why)
        return [(g, repeat) for g in x.segs]

    def _call_function(self, node: fx.Node) -> Value:
        return dispatch.call_function(self, node)

    def _call_method(self, node: fx.Node) -> Value:
        return dispatch.call_method(self, node)


def _derived(values: list[Value]) -> Value | None:
    """``Derived`` when the values are parameter-only and at least one is a tensor, else None."""
    sources = param_sources(Tup(tuple(values)))
    if sources is None or not any(isinstance(v, (Param, Derived)) for v in values):
        return None
    return Derived(sources)


def _is_metadata_use(user: fx.Node) -> bool:
    if user.op == "call_function" and user.target is builtins.getattr:
        return str(user.args[1]) in META_ATTRS | {"shape"}
    return user.op == "call_method" and str(user.target) in SHAPE_METHODS


def propagate(ctx: Context, traced: TracedGraph) -> None:
    """Run the propagation rules over one traced graph, updating ``ctx.table``."""
    _GraphPass(ctx, traced).run()
