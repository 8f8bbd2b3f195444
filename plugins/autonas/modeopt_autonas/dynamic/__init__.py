"""Dynamic modules: converted layers that compute on the active subnet of their full-size weights.

Importing this package registers the built-in dynamic classes in ``LAYERS``.

Registering a third-party layer ``MyLayer`` (sketch)::

    from modeopt_autonas.layers import LAYERS, LayerSpec
    from modeopt_autonas.dynamic import DynamicModule, attr_view, param_view

    class DynamicMyLayer(DynamicModule, MyLayer):  # the mixin first, the original class last
        _dyn_role_attrs = {"out": "out_features", "in": "in_features"}   # names hparams
        _dyn_rule_keys = ("features_ratio", "feature_divisor")          # rule keys for its choices
        weight = param_view("weight")            # active slice of a parameter
        out_features = attr_view("out_features")  # active value of an attribute

        @staticmethod
        def full_width(module, role):             # original width of a role (structure check)
            return module.out_features if role == "out" else module.in_features

        def _dyn_layout(self):                    # which tensor dims each role slices
            return {"out": (("weight", 0),), "in": (("weight", 1),)}

        def channel_weight(self, role):           # optional: tensor dim scoring a role's channels
            return ("weight", 0 if role == "out" else 1)  # (default: the role's "weight" entry)

        def _dyn_attrs(self):                     # active attribute values, from the bindings
            dims = self.__dict__["_dyn_dims"]
            return {"out_features": dims["out"].width() if "out" in dims else self.__dict__["out_features"]}

    LAYERS.register_spec(MyLayer, lambda m: LayerSpec("producer", -1, -1))
    LAYERS.register_dynamic(MyLayer, DynamicMyLayer)

The original ``forward`` must read the sliced tensors and attributes through ``self`` (as torch layers
do); otherwise override ``forward`` too. FLOPs are taken as proportional to the size of
``_dyn_flops_tensor`` (default ``"weight"``; None when FLOPs do not depend on the widths).
"""

from __future__ import annotations

from torch import nn

from ..layers import LAYERS
from .base import DimBinding, DynamicModule, attr_view, buffer_view, dynamic_class_for, param_view
from .conv import (
    DynamicConv1d,
    DynamicConv2d,
    DynamicConv3d,
    DynamicConvTranspose1d,
    DynamicConvTranspose2d,
    DynamicConvTranspose3d,
    kernel_size_choices,
)
from .linear import DynamicLinear
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
from .sequential import DynamicSequential

__all__ = [
    "DimBinding",
    "DynamicModule",
    "DynamicSequential",
    "attr_view",
    "buffer_view",
    "dynamic_class_for",
    "is_dynamic",
    "kernel_size_choices",
    "param_view",
]

_BUILTIN: dict[type[nn.Module], type[DynamicModule]] = {
    nn.Conv1d: DynamicConv1d,
    nn.Conv2d: DynamicConv2d,
    nn.Conv3d: DynamicConv3d,
    nn.ConvTranspose1d: DynamicConvTranspose1d,
    nn.ConvTranspose2d: DynamicConvTranspose2d,
    nn.ConvTranspose3d: DynamicConvTranspose3d,
    nn.Linear: DynamicLinear,
    nn.BatchNorm1d: DynamicBatchNorm1d,
    nn.BatchNorm2d: DynamicBatchNorm2d,
    nn.BatchNorm3d: DynamicBatchNorm3d,
    nn.SyncBatchNorm: DynamicSyncBatchNorm,
    nn.InstanceNorm1d: DynamicInstanceNorm1d,
    nn.InstanceNorm2d: DynamicInstanceNorm2d,
    nn.InstanceNorm3d: DynamicInstanceNorm3d,
    nn.LayerNorm: DynamicLayerNorm,
    nn.GroupNorm: DynamicGroupNorm,
}
for _cls, _dyn in _BUILTIN.items():
    LAYERS.register_dynamic(_cls, _dyn)


def is_dynamic(module: nn.Module) -> bool:
    """True when ``module`` is a converted (dynamic) module."""
    return isinstance(module, DynamicModule)
