"""Dynamic modules: converted layers that compute on the active subnet of their full-size weights.

Importing this package registers the built-in layer types (convs, Linear, norms) in ``LAYERS``.
A dynamic class puts :class:`DynamicModule` before the original class and implements its public
contract (``dynamic_roles``, ``dynamic_full_width``, ``dynamic_layout``, ``dynamic_attrs``, optionally
``dynamic_channel_weight``/``dynamic_after_export``/``dynamic_flops_tensor``); tensors and attributes
that follow the subnet are declared with :func:`param_view`, :func:`buffer_view` and
:func:`attr_view`. ``docs/writing-a-plugin.md`` ("Custom searchable layers") has a worked example.

The original ``forward`` must read the sliced tensors and attributes through ``self`` (as torch layers
do); otherwise override ``forward`` too.
"""

from __future__ import annotations

from torch import nn

from ..layers import (
    LAYERS,
    LayerType,
    channel_norm_spec,
    conv_spec,
    embedding_spec,
    group_norm_spec,
    layer_norm_spec,
    linear_spec,
)
from .base import DimBinding, DynamicModule, FlopsTerm, attr_view, buffer_view, dynamic_class_for, param_view
from .conv import (
    DynamicConv1d,
    DynamicConv2d,
    DynamicConv3d,
    DynamicConvTranspose1d,
    DynamicConvTranspose2d,
    DynamicConvTranspose3d,
    kernel_size_choices,
)
from .linear import DynamicEmbedding, DynamicLinear
from .mha import DynamicMultiheadAttention, PrunedMultiheadAttention, mha_spec
from .norm import (
    DynamicBatchNorm1d,
    DynamicBatchNorm2d,
    DynamicBatchNorm3d,
    DynamicGroupNorm,
    DynamicInstanceNorm1d,
    DynamicInstanceNorm2d,
    DynamicInstanceNorm3d,
    DynamicLayerNorm,
    DynamicSyncBatchNorm,
)
from .sequential import DynamicBlock, DynamicSequential, DynamicTensorsBlock
from .tensors import DynamicTensors

__all__ = [
    "BUILTIN_LAYER_TYPES",
    "DimBinding",
    "DynamicBlock",
    "DynamicModule",
    "DynamicSequential",
    "DynamicTensors",
    "DynamicTensorsBlock",
    "FlopsTerm",
    "PrunedMultiheadAttention",
    "attr_view",
    "buffer_view",
    "dynamic_class_for",
    "is_dynamic",
    "kernel_size_choices",
    "param_view",
]

BUILTIN_LAYER_TYPES: tuple[LayerType, ...] = (
    *(
        LayerType(cls, conv_spec, dyn, rules="channels")
        for cls, dyn in (
            (nn.Conv1d, DynamicConv1d),
            (nn.Conv2d, DynamicConv2d),
            (nn.Conv3d, DynamicConv3d),
            (nn.ConvTranspose1d, DynamicConvTranspose1d),
            (nn.ConvTranspose2d, DynamicConvTranspose2d),
            (nn.ConvTranspose3d, DynamicConvTranspose3d),
        )
    ),
    LayerType(nn.Linear, linear_spec, DynamicLinear, rules="features"),
    LayerType(nn.Embedding, embedding_spec, DynamicEmbedding, rules="features"),
    *(
        LayerType(cls, channel_norm_spec, dyn, rules="features")
        for cls, dyn in (
            (nn.BatchNorm1d, DynamicBatchNorm1d),
            (nn.BatchNorm2d, DynamicBatchNorm2d),
            (nn.BatchNorm3d, DynamicBatchNorm3d),
            (nn.SyncBatchNorm, DynamicSyncBatchNorm),
            (nn.InstanceNorm1d, DynamicInstanceNorm1d),
            (nn.InstanceNorm2d, DynamicInstanceNorm2d),
            (nn.InstanceNorm3d, DynamicInstanceNorm3d),
        )
    ),
    LayerType(nn.LayerNorm, layer_norm_spec, DynamicLayerNorm, rules="features"),
    LayerType(nn.GroupNorm, group_norm_spec, DynamicGroupNorm, rules="channels"),
    # heads and the embedding width follow the rules of its projections (Linear)
    LayerType(nn.MultiheadAttention, mha_spec, DynamicMultiheadAttention, rules="features", rule_alias="nn.Linear"),
)
"""The layer types the search space supports out of the box (their ``rule_alias`` are the configs' keys)."""
for _record in BUILTIN_LAYER_TYPES:
    LAYERS.register(_record)


def is_dynamic(module: nn.Module) -> bool:
    """True when ``module`` is a converted (dynamic) module."""
    return isinstance(module, DynamicModule)
