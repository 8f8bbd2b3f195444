"""The layer registry: which module types the search space understands, and how their channels flow.

One ``LayerRegistry`` instance (``LAYERS``) is the single source of truth shared by the tied-channel
analysis (it reads ``LayerSpec``\\ s) and the search-space builder (it reads the dynamic classes).
Third-party plugins add their own layer types through the ``modeopt_autonas_register_layers`` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["LAYERS", "LayerRegistry", "LayerSpec"]


@dataclass(frozen=True)
class LayerSpec:
    """How channels flow through one module instance.

    Attributes:
        kind: ``"producer"`` when the output width is independent of the input width (conv, linear:
            roles ``"in"`` and ``"out"``); ``"passthrough"`` when the output channels are the
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
    """

    kind: str
    in_dim: int
    out_dim: int
    multiple_of: int = 1
    sortable: bool = True
    frozen_reason: str = ""


SpecFn = Callable[[nn.Module], LayerSpec]


def _conv_spec(m: nn.Module) -> LayerSpec:
    assert isinstance(m, nn.modules.conv._ConvNd)
    if m.groups == 1:
        return LayerSpec("producer", 1, 1)
    if m.in_channels == m.out_channels:
        per_group = m.in_channels // m.groups
        return LayerSpec("passthrough", 1, 1, multiple_of=per_group, sortable=per_group == 1)
    return LayerSpec(
        "producer", 1, 1, frozen_reason=f"grouped conv with in_channels != out_channels (groups={m.groups})"
    )


def _linear_spec(m: nn.Module) -> LayerSpec:
    return LayerSpec("producer", -1, -1)


def _channel_norm_spec(m: nn.Module) -> LayerSpec:
    return LayerSpec("passthrough", 1, 1)


def _layer_norm_spec(m: nn.Module) -> LayerSpec:
    return LayerSpec("passthrough", -1, -1)


def _group_norm_spec(m: nn.Module) -> LayerSpec:
    assert isinstance(m, nn.GroupNorm)
    per_group = m.num_channels // m.num_groups
    return LayerSpec("passthrough", 1, 1, multiple_of=per_group, sortable=False)


class LayerRegistry:
    """Maps module classes to a spec function and (once registered) a dynamic class."""

    def __init__(self) -> None:
        self._specs: dict[type[nn.Module], SpecFn] = {}
        self._dynamic: dict[type[nn.Module], type[nn.Module]] = {}

    def register_spec(self, cls: type[nn.Module], spec: SpecFn) -> None:
        """Declare how channels flow through ``cls`` (exact class match)."""
        self._specs[cls] = spec

    def register_dynamic(self, cls: type[nn.Module], dynamic_cls: type[nn.Module]) -> None:
        """Declare the dynamic class that ``cls`` instances are converted to."""
        self._dynamic[cls] = dynamic_cls

    def unregister(self, cls: type[nn.Module]) -> None:
        """Forget ``cls`` (for tests and for plugins being unloaded)."""
        self._specs.pop(cls, None)
        self._dynamic.pop(cls, None)

    def lookup_class(self, cls: type[nn.Module]) -> type[nn.Module] | None:
        """The registered class that ``cls`` is or inherits from without overriding ``forward``."""
        if cls in self._specs:
            return cls
        for base in cls.__mro__[1:]:
            if base in self._specs and cls.forward is base.forward:
                return base
        return None

    def spec(self, module: nn.Module) -> LayerSpec | None:
        """The spec of ``module``, or None when the analysis should treat it as opaque."""
        base = self.lookup_class(type(module))
        return None if base is None else self._specs[base](module)

    def dynamic_class(self, module: nn.Module) -> type[nn.Module] | None:
        """The dynamic class for ``module``'s registered base class, if any."""
        base = self.lookup_class(type(module))
        return None if base is None else self._dynamic.get(base)

    def registered(self) -> list[type[nn.Module]]:
        """All registered layer classes."""
        return list(self._specs)


LAYERS = LayerRegistry()

_cls: type[nn.Module]
for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    LAYERS.register_spec(_cls, _conv_spec)
LAYERS.register_spec(nn.Linear, _linear_spec)
for _cls in (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
):
    LAYERS.register_spec(_cls, _channel_norm_spec)
LAYERS.register_spec(nn.LayerNorm, _layer_norm_spec)
LAYERS.register_spec(nn.GroupNorm, _group_norm_spec)
