"""torchvision's Swin ``ShiftedWindowAttention`` in the search space: searchable heads and stream width.

Its forward hands ``self.qkv.weight``, ``self.proj.weight``, the relative position bias and
``self.num_heads`` to the function ``shifted_window_attention`` (wrapped for ``torch.fx``, so opaque to a
trace). The layer's flow (its spec): the input's channels are ``qkv``'s input, the heads an internal dim
of ``head_dim`` features: the rows of each of q, k and v in ``qkv``, the columns of ``proj`` and the
columns of ``relative_position_bias_table`` (one bias per head); the output is ``proj``'s rows.

The function reads the head size as ``C // num_heads`` of the input width ``C`` and reshapes the inner
width back to ``C``, so it only runs subnets with ``num_heads * head_dim == C == proj.out_features``:
the dynamic module calls it for those and :func:`window_attention` (the same computation with the head
size kept) otherwise; such a subnet exports to a subclass, ``PrunedShiftedWindowAttention``, with a
``head_dim`` attribute and that forward. Nothing here imports torchvision: the layer type is registered
once ``torchvision.models.swin_transformer`` is loaded (``thirdparty.register_loaded``).

timm's Swin ``WindowAttention`` has the same flow on windows already partitioned by its block
(``(windows x batch, tokens, C)``), and its own forward infers the head size (``reshape(..., heads, -1)``)
and reads the heads from ``num_heads`` and the bias table, so it runs every subnet and exports to itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import InternalDim, LayerSpec
from .base import DynamicModule, FlopsTerm, attr_view, param_view

__all__ = [
    "DynamicTimmWindowAttentionMixin",
    "DynamicWindowAttentionMixin",
    "timm_window_attention_spec",
    "window_attention",
    "window_attention_spec",
]


def _head_dim(m: Any) -> int:
    return int(m.__dict__.get("head_dim") or m.qkv.out_features // 3 // m.num_heads)


def window_attention_spec(module: nn.Module) -> LayerSpec:
    """The flow of a ``ShiftedWindowAttention`` (see the module doc)."""
    m: Any = module
    qkv, proj, heads = m.qkv, m.proj, int(m.num_heads)
    d = _head_dim(m)
    internal = InternalDim(heads, (("qkv.out", 3, d), ("proj.in", 1, d), ("heads", 1, 1)))
    widths = (("qkv.in", int(qkv.in_features)), ("proj.out", int(proj.out_features)))
    return LayerSpec("producer", -1, -1, inputs=(("x", "qkv.in"),), output="proj.out", widths=widths,
                     internal=(internal,))


def _shift_mask(padded: tuple[int, int], window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
    """``(windows, tokens, tokens)``: -100 between tokens of a window that come from different regions of
    the cyclically shifted map (they must not attend to each other), else 0."""
    regions = torch.zeros(padded, dtype=torch.long, device=like.device)
    label = 0
    for rows in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for cols in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            regions[rows, cols] = label
            label += 1
    per_window = regions.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    per_window = per_window.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differ = per_window.unsqueeze(1) != per_window.unsqueeze(2)
    return torch.zeros(differ.shape, dtype=like.dtype, device=like.device).masked_fill_(differ, -100.0)


def _layout(m: Any, x: torch.Tensor) -> tuple[int, int, list[int]]:
    """The padded height and width and the effective shift of a ``(B, H, W, C)`` input."""
    window = m.window_size
    padded_h = x.shape[1] + (-x.shape[1]) % window[0]
    padded_w = x.shape[2] + (-x.shape[2]) % window[1]
    shift = [0 if window[0] >= padded_h else m.shift_size[0], 0 if window[1] >= padded_w else m.shift_size[1]]
    return padded_h, padded_w, shift


def window_attention(m: Any, x: torch.Tensor) -> torch.Tensor:
    """``m``'s shifted-window attention on a ``(B, H, W, C)`` input with ``m.num_heads`` heads of
    ``head_dim`` features whatever the input width (the output has ``m.proj.out_features`` channels)."""
    batch, height, width, _ = x.shape
    window = m.window_size
    padded_h, padded_w, shift = _layout(m, x)
    x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    shifted = sum(shift) > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols, tokens = padded_h // window[0], padded_w // window[1], window[0] * window[1]
    windows = x.view(batch, rows, window[0], cols, window[1], -1).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(batch * rows * cols, tokens, -1)

    heads, head_dim = int(m.num_heads), _head_dim(m)
    qkv = F.linear(windows, m.qkv.weight, m.qkv.bias).reshape(windows.shape[0], tokens, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = (q * head_dim**-0.5).matmul(k.transpose(-2, -1)) + m.get_relative_position_bias()
    if shifted:
        mask = _shift_mask((padded_h, padded_w), window, shift, scores)
        scores = (scores.view(batch, rows * cols, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0))
        scores = scores.view(-1, heads, tokens, tokens)
    probs = F.dropout(F.softmax(scores, dim=-1), p=m.attention_dropout, training=m.training)
    out = probs.matmul(v).transpose(1, 2).reshape(windows.shape[0], tokens, heads * head_dim)
    out = F.dropout(F.linear(out, m.proj.weight, m.proj.bias), p=m.dropout, training=m.training)

    out = out.view(batch, rows, cols, window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, padded_h, padded_w, -1)
    if shifted:
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :height, :width, :].contiguous()


def _weight_factors(layer: nn.Module) -> list[Any]:
    weight = layer._parameters["weight"]
    assert weight is not None
    if isinstance(layer, DynamicModule):
        return list(layer._dyn_tensor_factors("weight", weight.shape))
    return list(weight.shape)


class _WindowAttentionHeads(DynamicModule):
    """What both window attentions share: heads as the role, ``num_heads`` and the bias table follow."""

    dynamic_roles = {"heads": "num_heads"}
    dynamic_flops_tensor = None  # see dynamic_flops_terms

    relative_position_bias_table = param_view("relative_position_bias_table")
    num_heads = attr_view("num_heads")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.num_heads)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"heads": (("relative_position_bias_table", 1),)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        return None  # the q/k/v rows of the projection score the heads

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {"num_heads": widths.get("heads", self.dynamic_original("num_heads"))}


class DynamicWindowAttentionMixin(_WindowAttentionHeads):
    """Dynamic ``ShiftedWindowAttention`` (a mixin: torchvision's class is the other base)."""

    def _dyn_plain(self, heads: int) -> bool:
        """Whether ``heads`` heads fill the width (torchvision's function can run the subnet)."""
        m: Any = self
        return heads * _head_dim(m) == m.qkv.in_features == m.proj.out_features

    def dynamic_export_class(self, attrs: dict[str, Any]) -> type[nn.Module]:
        original = self.__dict__["_dyn_original_cls"]
        return original if self._dyn_plain(attrs["num_heads"]) else pruned_window_attention(original)

    def dynamic_after_export(self, attrs: dict[str, Any]) -> None:
        m: Any = self  # already of its exported class: only plain attributes here
        if isinstance(self, _PrunedWindowAttentionMixin):
            m.head_dim = m.qkv.out_features // 3 // attrs["num_heads"]

    def dynamic_flops_terms(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FlopsTerm] | None:
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        m: Any = self
        padded_h, padded_w, _ = _layout(m, x)
        tokens = x.shape[0] * padded_h * padded_w  # windows x tokens per window
        per_window = m.window_size[0] * m.window_size[1]
        head_dim = _head_dim(m)
        inner = self.dynamic_original("num_heads") * head_dim
        binding = self.__dict__["_dyn_dims"].get("heads")
        heads: list[Any] = [self.dynamic_original("num_heads") if binding is None else binding, head_dim]
        qkv, proj = m.qkv._parameters["weight"], m.proj._parameters["weight"]
        return [
            (2 * tokens * qkv.numel(), [2 * tokens, *_weight_factors(m.qkv)]),
            (4 * tokens * per_window * inner, [4 * tokens * per_window, *heads]),  # q @ k^T and weights @ v
            (2 * tokens * proj.numel(), [2 * tokens, *_weight_factors(m.proj)]),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dyn_plain(self.num_heads):
            return super().forward(x)
        return window_attention(self, x)


class _PrunedWindowAttentionMixin(nn.Module):
    """The forward of an exported window attention whose heads do not fill its width (``head_dim`` kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x)


_PRUNED: dict[type[nn.Module], type[nn.Module]] = {}


def pruned_window_attention(original: type[nn.Module]) -> type[nn.Module]:
    """``PrunedShiftedWindowAttention``: the subclass of ``original`` (torchvision's class) exported subnets
    with ``num_heads * head_dim`` != the width become; it holds ``head_dim`` and runs :func:`window_attention`."""
    if original not in _PRUNED:
        namespace = {"__module__": __name__, "__doc__": _PrunedWindowAttentionMixin.__doc__}
        _PRUNED[original] = type(f"Pruned{original.__name__}", (_PrunedWindowAttentionMixin, original), namespace)
    return _PRUNED[original]


def timm_window_attention_spec(module: nn.Module) -> LayerSpec:
    """The flow of timm's Swin ``WindowAttention`` (see the module doc): as torchvision's, on windows."""
    return window_attention_spec(module)


class DynamicTimmWindowAttentionMixin(_WindowAttentionHeads):
    """Dynamic timm Swin ``WindowAttention`` (a mixin: timm's class is the other base; its forward runs)."""

    def dynamic_flops_terms(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FlopsTerm] | None:
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return None
        m: Any = self
        windows, tokens = int(x.shape[0]), int(x.shape[1])
        head_dim = _head_dim(m)
        inner = self.dynamic_original("num_heads") * head_dim
        binding = self.__dict__["_dyn_dims"].get("heads")
        heads: list[Any] = [self.dynamic_original("num_heads") if binding is None else binding, head_dim]
        qkv, proj = m.qkv._parameters["weight"], m.proj._parameters["weight"]
        rows = windows * tokens
        return [
            (2 * rows * qkv.numel(), [2 * rows, *_weight_factors(m.qkv)]),
            (4 * rows * tokens * inner, [4 * rows * tokens, *heads]),  # q @ k^T and weights @ v
            (2 * rows * proj.numel(), [2 * rows, *_weight_factors(m.proj)]),
        ]
