"""Tables of the torch ops and modules the propagation understands, by what they do to channels."""

from __future__ import annotations

import builtins
import math
import operator
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADD_FUNCTIONS",
    "ADD_METHODS",
    "BINARY_FUNCTIONS",
    "BINARY_METHODS",
    "ELEMENTWISE_FUNCTIONS",
    "ELEMENTWISE_METHODS",
    "ELEMENTWISE_MODULES",
    "FUNCTIONAL_LAYERS",
    "META_ATTRS",
    "PAD_MODULES",
    "SHAPE_METHODS",
    "SPATIAL_FUNCTIONS",
    "SPATIAL_MODULES",
    "STATIC_MODULES",
    "TRACED_THROUGH",
    "elementwise_modules",
    "is_known_leaf",
    "is_static_function",
    "module_class_in",
    "op_name",
    "spatial_dims",
]


def _fns(module: Any, names: str) -> set[Callable[..., Any]]:
    return {getattr(module, n) for n in names.split() if hasattr(module, n)}


#: Shape-preserving ops whose first argument is the data (activations, dropout, casts, ...).
ELEMENTWISE_FUNCTIONS: set[Callable[..., Any]] = (
    _fns(
        F,
        "relu relu_ relu6 hardswish hardsigmoid sigmoid silu gelu tanh elu elu_ leaky_relu leaky_relu_ selu "
        "celu mish softplus hardtanh hardtanh_ logsigmoid softsign tanhshrink hardshrink softshrink threshold "
        "rrelu softmax log_softmax softmin dropout dropout1d dropout2d dropout3d alpha_dropout "
        "feature_alpha_dropout normalize",
    )
    | _fns(
        torch,
        "relu relu_ sigmoid sigmoid_ tanh tanh_ abs exp neg sqrt rsqrt square clamp clip erf clone softmax "
        "log_softmax zeros_like ones_like empty_like rand_like randn_like full_like",
    )
    | {operator.neg, operator.pos}
)
ELEMENTWISE_METHODS = frozenset(
    "relu relu_ sigmoid sigmoid_ tanh tanh_ clone contiguous detach detach_ to float half double bfloat16 "
    "type type_as cpu cuda abs abs_ exp neg sqrt rsqrt square clamp clamp_ clip clip_ softmax log_softmax "
    "requires_grad_ erf hardtanh_".split()
)

#: Broadcasting binary ops: same-layout operands must have tied channels.
BINARY_FUNCTIONS: set[Callable[..., Any]] = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.pow,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
} | _fns(torch, "add sub subtract mul multiply div divide true_divide maximum minimum pow fmax fmin")
BINARY_METHODS = frozenset(
    "add add_ sub sub_ mul mul_ div div_ true_divide pow pow_ maximum minimum __add__ __radd__ __sub__ "
    "__rsub__ __mul__ __rmul__ __truediv__ __rtruediv__".split()
)
ADD_FUNCTIONS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add}
ADD_METHODS = frozenset({"add", "add_", "__add__", "__radd__"})

#: Tensor attributes that are metadata, not data.
META_ATTRS = frozenset("dtype device ndim is_cuda requires_grad layout is_sparse is_quantized".split())
#: Methods that only read a tensor's metadata.
SHAPE_METHODS = frozenset("size dim ndimension numel nelement element_size get_device is_contiguous".split())

_SPATIAL_FN_NAMES = (
    "max_pool{n}d avg_pool{n}d adaptive_avg_pool{n}d adaptive_max_pool{n}d lp_pool{n}d fractional_max_pool{n}d"
)
#: Ops acting on trailing spatial dims: function -> number of spatial dims (None: all but N and C).
SPATIAL_FUNCTIONS: dict[Callable[..., Any], int | None] = {
    fn: n for n in (1, 2, 3) for fn in _fns(F, _SPATIAL_FN_NAMES.format(n=n))
}
SPATIAL_FUNCTIONS.update({fn: None for fn in _fns(F, "interpolate upsample upsample_nearest upsample_bilinear")})

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Tanh,
    nn.ELU,
    nn.LeakyReLU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
    nn.RReLU,
    nn.Softmax,
    nn.Softmax2d,
    nn.LogSoftmax,
    nn.Softmin,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Identity,
)
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
PAD_MODULES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, f"{kind}Pad{n}d")
    for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
    for n in (1, 2, 3)
    if hasattr(nn, f"{kind}Pad{n}d")
)
#: Functional ops that compute a layer from its own tensors, by the spec they share with the layer
#: classes: op -> (spec function name, {argument name: position} of the tensors it takes). A module
#: whose forward applies one of these to its own parameters is that layer (e.g. timm's ``BatchNormAct2d``
#: is a ``BatchNorm2d`` whose forward calls ``F.batch_norm`` and then an activation).
FUNCTIONAL_LAYERS: dict[Callable[..., Any], tuple[str, dict[str, int]]] = {
    **{fn: ("channel_norm_spec", {"running_mean": 1, "running_var": 2, "weight": 3, "bias": 4})
       for fn in _fns(F, "batch_norm instance_norm")},
    F.layer_norm: ("layer_norm_spec", {"weight": 2, "bias": 3}),
    F.group_norm: ("group_norm_spec", {"weight": 2, "bias": 3}),
    F.linear: ("linear_spec", {"weight": 1, "bias": 2}),
    **{fn: ("conv_spec", {"weight": 1, "bias": 2})
       for fn in _fns(F, "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d")},
}
if hasattr(F, "rms_norm"):
    FUNCTIONAL_LAYERS[F.rms_norm] = ("layer_norm_spec", {"weight": 2})

#: Functions wrapped for ``torch.fx`` (``torch.fx.wrap``) that a trace with values follows inside, by
#: (module, name): they are wrapped only for their shape arithmetic, which such a trace runs for real.
#: Swin's patch merging concatenates four spatial copies of the channels (a wrapped call would freeze them).
TRACED_THROUGH: tuple[tuple[str, str], ...] = (("torchvision.models.swin_transformer", "_patch_merging_pad"),)

#: Modules that need no special casing beyond "known leaf" (handled explicitly by the propagation).
STATIC_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten, nn.PReLU)


def module_class_in(module: nn.Module, classes: tuple[type[nn.Module], ...]) -> bool:
    """``module`` is one of ``classes`` or a subclass that keeps its ``forward``."""
    for cls in classes:
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return True
    return False


#: element-wise modules of optional libraries, by (module, class name): looked up only once the library
#: is loaded (a model built from it imported it), so importing the analysis imports neither
_OPTIONAL_ELEMENTWISE = (("timm.layers.drop", "DropPath"), ("torchvision.ops.stochastic_depth", "StochasticDepth"))


#: element-wise functions of optional libraries (torchvision wraps stochastic_depth for fx, so it shows up
#: as a call_function), looked up the same way
_OPTIONAL_ELEMENTWISE_FUNCTIONS = (("torchvision.ops.stochastic_depth", "stochastic_depth"),)


def is_elementwise_function(target: Any) -> bool:
    """``target`` (an fx call_function target) acts element-wise: torch's or a loaded optional library's."""
    if target in ELEMENTWISE_FUNCTIONS:
        return True
    return any(target is getattr(sys.modules.get(m), name, None) for m, name in _OPTIONAL_ELEMENTWISE_FUNCTIONS)


def elementwise_modules() -> tuple[type[nn.Module], ...]:
    """Element-wise module classes: torch's and those of loaded optional libraries (stochastic depth)."""
    extra = []
    for module_name, class_name in _OPTIONAL_ELEMENTWISE:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            extra.append(cls)
    return (*ELEMENTWISE_MODULES, *extra)


def is_known_leaf(module: nn.Module) -> bool:
    """Modules the propagation handles as a whole (never traced into)."""
    return module_class_in(module, elementwise_modules() + SPATIAL_MODULES + PAD_MODULES + STATIC_MODULES)


def spatial_dims(module: nn.Module) -> int | None:
    """Number of trailing spatial dims a pooling/upsampling/padding module acts on."""
    match = re.search(r"(\d)d$", type(module).__name__)
    return int(match.group(1)) if match else None


_STATIC_MODULES = {"_operator", "operator", "builtins", "math"}


def is_static_function(target: Any) -> bool:
    """Python-level arithmetic/comparison that yields plain numbers when given plain numbers."""
    return getattr(target, "__module__", None) in _STATIC_MODULES or target in (builtins.getattr, math.sqrt)


def op_name(node: Any) -> str:
    """A readable name of an fx node's operation."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        target = node.target
        module = getattr(target, "__module__", None) or ""
        module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional", "torch._C": "torch"}.get(
            module, module
        )
        name = getattr(target, "__name__", repr(target))
        return f"{module}.{name}" if module else name
    return f"{node.op} {node.target}"
