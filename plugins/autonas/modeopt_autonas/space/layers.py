"""The layer registry: which module types the search space understands, and how their channels flow.

One record per layer type (:class:`LayerType`: spec, dynamic class, rules) in one ``LayerRegistry``
(``LAYERS``), shared by the tied-channel analysis (it reads the specs), the search-space builder (the
dynamic classes) and the NAS configs (the rule keys). Third-party plugins register their own layer
types through the ``modeopt_autonas_register_layers`` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

__all__ = [
    "LAYERS",
    "RULE_KEYS",
    "InternalDim",
    "LayerCall",
    "LayerRegistry",
    "LayerSpec",
    "LayerType",
    "channel_norm_spec",
    "conv_spec",
    "embedding_spec",
    "group_norm_spec",
    "layer_norm_spec",
    "linear_spec",
]


@dataclass(frozen=True)
class InternalDim:
    """A channel dim a layer makes and uses up inside itself (attention heads): neither its input nor its
    output carries it, so only the layer's own tensors (and those of child layers it uses) shrink with it.

    Attributes:
        size: its width in channels (``num_heads``).
        roles: ``(role, pieces, repeat)`` per module dim tied to it: that dim is ``pieces`` consecutive
            copies of the group, each channel spanning ``repeat`` features. E.g. a packed q/k/v
            projection ``("qkv", 3, head_dim)``, the output projection's input ``("out_proj.in", 1,
            head_dim)``, a per-head bias table ``("heads", 1, 1)``. ``"<child>.<role>"`` is a role of the
            child module ``<child>`` (a registered layer whose weights the layer uses).
        sortable: whether its channels may be reordered by importance (whole heads).
    """

    size: int
    roles: tuple[tuple[str, int, int], ...]
    sortable: bool = True


@dataclass(frozen=True)
class LayerCall:
    """One call of a layer as the analysis sees it (the argument of :attr:`LayerSpec.check_call`).

    Attributes:
        shapes: the shape of each tensor argument on the example input, by ``forward`` parameter name
            (None where unknown: traced without an example).
        literals: the value of each non-tensor argument given in the call (defaults are not listed).
        used_items: for a layer returning a tuple, the indices of the items the traced code uses.
    """

    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    literals: dict[str, Any] = field(default_factory=dict)
    used_items: frozenset[int] = frozenset()


@dataclass(frozen=True)
class LayerSpec:
    """How channels flow through one module instance.

    Attributes:
        kind: ``"producer"`` when the output width is independent of the input width (conv, linear:
            roles ``"in"`` and ``"out"``); ``"source"`` for a producer whose input holds no channels
            (an embedding looks up token ids: role ``"out"`` only); ``"passthrough"`` when the output channels are the
            input channels (norms, depthwise/grouped convs with in == out: role ``"features"``
            for norms, roles ``"in"`` and ``"out"`` bound to the same group for grouped convs).
        in_dim: the dim of the input tensor that holds channels (``1`` for N,C,... tensors,
            ``-1`` for ...,C tensors).
        out_dim: the dim of the output tensor that holds channels.
        multiple_of: widths of this dimension must be a multiple of this (GroupNorm group size,
            channels per group of a grouped conv).
        sortable: whether channels may be reordered by importance (False for grouped convs and
            GroupNorm, where reordering would mix groups).
        frozen_reason: non-empty when this instance cannot change width at all (e.g. a grouped
            conv with in != out); the analysis then freezes every group touching it.

    A *composite* producer (attention) also sets ``inputs`` and describes its own flow:

    Attributes:
        inputs: ``(forward parameter, role)`` per channel-carrying input, e.g. ``(("query", "in"),
            ("key", "in"), ("value", "in"))``: several inputs bound to one role are tied.
        output: the role the output's channels are bound to (``"out_proj.out"``: a child's role).
        widths: ``(role, width)`` of every input role and of ``output``.
        internal: the dims the layer makes and uses up itself (:class:`InternalDim`).
        tuple_output: ``(item, items)`` when ``forward`` returns a tuple whose item ``item`` holds the
            channels (``nn.MultiheadAttention`` returns ``(output, weights)``: ``(0, 2)``).
        check_call: ``check_call(call) -> reason``: why one call (see :class:`LayerCall`) does not let
            the internal dims change (e.g. a mask with one entry per head); ``""`` when it does.
        fused_parents: parent classes whose own forward may bypass this layer with a fused kernel that
            reads its widths as one (torch's ``nn.TransformerEncoderLayer`` reads its attention's
            ``embed_dim`` and ``num_heads``): inside them each internal dim keeps the width of the first
            input (head count x head size == the input's width).
    """

    kind: str
    in_dim: int
    out_dim: int
    multiple_of: int = 1
    sortable: bool = True
    frozen_reason: str = ""
    inputs: tuple[tuple[str, str], ...] = ()
    output: str = "out"
    widths: tuple[tuple[str, int], ...] = ()
    internal: tuple[InternalDim, ...] = ()
    tuple_output: tuple[int, int] | None = None
    check_call: Callable[[LayerCall], str] | None = None
    fused_parents: tuple[type[nn.Module], ...] = ()

    @property
    def composite(self) -> bool:
        """Whether the spec describes its own flow (``inputs``, ``internal`` dims, child roles)."""
        return bool(self.inputs)


def conv_spec(m: nn.Module) -> LayerSpec:
    """Convs: producers; depthwise/grouped with in == out pass channels through (per group)."""
    assert isinstance(m, nn.modules.conv._ConvNd)
    if m.groups == 1:
        return LayerSpec("producer", 1, 1)
    if m.in_channels == m.out_channels:
        per_group = m.in_channels // m.groups
        return LayerSpec("passthrough", 1, 1, multiple_of=per_group, sortable=per_group == 1)
    return LayerSpec(
        "producer", 1, 1, frozen_reason=f"grouped conv with in_channels != out_channels (groups={m.groups})"
    )


def linear_spec(m: nn.Module) -> LayerSpec:
    """Linear layers: producers over the last dim."""
    return LayerSpec("producer", -1, -1)


def embedding_spec(m: nn.Module) -> LayerSpec:
    """Embeddings: a source of ``embedding_dim`` features (the last dim) from token ids."""
    return LayerSpec("source", -1, -1)


def channel_norm_spec(m: nn.Module) -> LayerSpec:
    """Batch/instance norms: pass the channels of dim 1 through."""
    return LayerSpec("passthrough", 1, 1)


def layer_norm_spec(m: nn.Module) -> LayerSpec:
    """LayerNorm: passes the features of the last dim through."""
    return LayerSpec("passthrough", -1, -1)


def group_norm_spec(m: nn.Module) -> LayerSpec:
    """GroupNorm: passes channels through in multiples of the group size (not sortable)."""
    assert isinstance(m, nn.GroupNorm)
    per_group = m.num_channels // m.num_groups
    return LayerSpec("passthrough", 1, 1, multiple_of=per_group, sortable=False)


SpecFn = Callable[[nn.Module], LayerSpec]
RuleKind = Literal["channels", "features"]
#: the rule keys that set the widths of a layer, by the kind of rule it follows
RULE_KEYS: dict[str, tuple[str, str]] = {
    "channels": ("channels_ratio", "channel_divisor"),
    "features": ("features_ratio", "feature_divisor"),
}
#: the built-in rule field a third-party layer follows by default, by kind
_DEFAULT_ALIAS = {"channels": "nn.Conv2d", "features": "nn.Linear"}


@dataclass(frozen=True)
class LayerType:
    """Everything the search space knows about one searchable layer class: one record, registered once.

    Attributes:
        module_class: the layer class. Subclasses that keep its ``forward`` are covered too.
        spec: ``spec(module) -> LayerSpec``: how channels flow through an instance (analysis).
        dynamic_class: the :class:`~modeopt_autonas.space.dynamic.DynamicModule` subclass instances
            are converted to (None: the analysis understands the layer, but it is never resized).
        rules: which rule keys give its widths: ``"channels"`` (``channels_ratio``/``channel_divisor``,
            like convs) or ``"features"`` (``features_ratio``/``feature_divisor``, like Linear and norms).
        rule_alias: the key of the NAS mode configs whose rules it follows, e.g. ``"nn.Conv2d"``;
            default: ``"nn.<Class>"`` for torch's own layers, else ``"nn.Conv2d"`` (channels) or
            ``"nn.Linear"`` (features). Glob overrides by module name work as for built-in layers.
    """

    module_class: type[nn.Module]
    spec: SpecFn
    dynamic_class: type[nn.Module] | None = None
    rules: RuleKind = "channels"
    rule_alias: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.module_class, type) and issubclass(self.module_class, nn.Module)):
            raise TypeError(f"LayerType.module_class must be an nn.Module subclass, got {self.module_class!r}")
        if not callable(self.spec):
            raise TypeError(f"LayerType.spec must be a function module -> LayerSpec, got {self.spec!r}")
        if self.rules not in RULE_KEYS:
            raise ValueError(f"LayerType.rules must be one of {sorted(RULE_KEYS)}, got {self.rules!r}")
        if not self.rule_alias:
            cls = self.module_class
            alias = f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else _DEFAULT_ALIAS[self.rules]
            object.__setattr__(self, "rule_alias", alias)

    @property
    def rule_keys(self) -> tuple[str, str]:
        """``(ratio key, divisor key)`` of its rules."""
        return RULE_KEYS[self.rules]


class LayerRegistry:
    """Layer types by class (see :class:`LayerType`); lookups follow subclasses that keep ``forward``."""

    def __init__(self) -> None:
        self._types: dict[type[nn.Module], LayerType] = {}

    def register(self, layer_type: LayerType) -> None:
        """Add (or replace) the record of ``layer_type.module_class``."""
        if not isinstance(layer_type, LayerType):
            raise TypeError(f"register() takes a LayerType record, got {type(layer_type).__name__}")
        self._types[layer_type.module_class] = layer_type

    def unregister(self, cls: type[nn.Module]) -> None:
        """Forget ``cls`` (for tests and for plugins being unloaded)."""
        self._types.pop(cls, None)

    def lookup_class(self, cls: type[nn.Module]) -> type[nn.Module] | None:
        """The registered class that ``cls`` is or inherits from without overriding ``forward``."""
        if cls in self._types:
            return cls
        for base in cls.__mro__[1:]:
            if base in self._types and cls.forward is base.forward:
                return base
        return None

    def base_class(self, cls: type[nn.Module]) -> type[nn.Module] | None:
        """The nearest registered class ``cls`` is or inherits from, whatever its ``forward``.

        The tied-channel analysis binds a subclass that overrides ``forward`` only after reading that
        forward (it applies the layer's functional op to the layer's own tensors, e.g. timm's
        ``BatchNormAct2d``: ``F.batch_norm`` then an activation); the builder then uses this lookup.
        """
        return next((base for base in cls.__mro__ if base in self._types), None)

    def layer_type(self, module: nn.Module, *, verified: bool = False) -> LayerType | None:
        """The record covering ``module``, or None when the analysis treats it as opaque.

        Args:
            verified: also for subclasses that override ``forward`` (see :meth:`base_class`).
        """
        base = self.base_class(type(module)) if verified else self.lookup_class(type(module))
        return None if base is None else self._types[base]

    def spec(self, module: nn.Module, *, verified: bool = False) -> LayerSpec | None:
        """The spec of ``module``, or None when the analysis should treat it as opaque."""
        record = self.layer_type(module, verified=verified)
        return None if record is None else record.spec(module)

    def dynamic_class(self, module: nn.Module, *, verified: bool = False) -> type[nn.Module] | None:
        """The dynamic class for ``module``'s registered base class, if any."""
        record = self.layer_type(module, verified=verified)
        return None if record is None else record.dynamic_class

    def registered(self) -> list[LayerType]:
        """All registered layer types, in registration order."""
        return list(self._types.values())


LAYERS = LayerRegistry()
"""The registry the analysis and the builder use; built-in layers are registered by ``.dynamic``."""
