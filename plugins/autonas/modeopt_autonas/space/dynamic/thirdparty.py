"""Layer types of other libraries that the search space knows, registered once those libraries are loaded.

The search space never imports an optional library itself: :func:`register_loaded` is called before each
analysis and build and adds the records of libraries already in ``sys.modules`` (a model built from
them has imported them). Today: Hugging Face's ``Conv1D`` (GPT-2's transposed linear layer),
torchvision's and timm's Swin window attention.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from ..layers import LAYERS, LayerSpec, LayerType
from .base import DynamicModule, attr_view, param_view
from .window_attention import (
    DynamicTimmWindowAttentionMixin,
    DynamicWindowAttentionMixin,
    timm_window_attention_spec,
    window_attention_spec,
)

__all__ = ["register_loaded"]

_DONE: set[str] = set()


def _conv1d_spec(module: nn.Module) -> LayerSpec:
    return LayerSpec("producer", -1, -1)


class _DynamicConv1DMixin(DynamicModule):
    """Dynamic Hugging Face ``Conv1D``: a linear layer with weight ``[in (nx), out (nf)]``."""

    dynamic_roles = {"out": "nf", "in": "nx"}
    weight = param_view("weight")
    bias = param_view("bias")
    nf = attr_view("nf")
    nx = attr_view("nx")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.nf if role == "out" else module.nx)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"out": (("weight", 1), ("bias", 0)), "in": (("weight", 0),)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        return ("weight", 1 if role == "out" else 0)

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {
            "nf": widths.get("out", self.dynamic_original("nf")),
            "nx": widths.get("in", self.dynamic_original("nx")),
        }


def register_loaded() -> None:
    """Register the known layer types of the libraries loaded so far (idempotent)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    if conv1d is not None and "transformers.Conv1D" not in _DONE:
        LAYERS.register(LayerType(conv1d, _conv1d_spec, _DynamicConv1DMixin, rules="features", rule_alias="nn.Linear"))
        _DONE.add("transformers.Conv1D")
    swin = sys.modules.get("torchvision.models.swin_transformer")
    window = getattr(swin, "ShiftedWindowAttention", None)
    if isinstance(window, type) and "torchvision.ShiftedWindowAttention" not in _DONE:
        LAYERS.register(LayerType(window, window_attention_spec, DynamicWindowAttentionMixin, rules="features",
                                  rule_alias="nn.Linear"))
        _DONE.add("torchvision.ShiftedWindowAttention")
    timm_swin = sys.modules.get("timm.models.swin_transformer")
    timm_window = getattr(timm_swin, "WindowAttention", None)
    if isinstance(timm_window, type) and "timm.WindowAttention" not in _DONE:
        LAYERS.register(LayerType(timm_window, timm_window_attention_spec, DynamicTimmWindowAttentionMixin,
                                  rules="features", rule_alias="nn.Linear"))
        _DONE.add("timm.WindowAttention")
