"""Dynamic ``nn.Linear`` with elastic input and output features, and ``nn.Embedding`` with an elastic embedding dim."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import DynamicModule, attr_view, param_view

__all__ = ["DynamicEmbedding", "DynamicLinear"]


class DynamicLinear(DynamicModule, nn.Linear):
    """Dynamic ``nn.Linear``: ``out`` slices weight rows and bias, ``in`` slices weight columns."""

    dynamic_roles = {"out": "out_features", "in": "in_features"}

    weight = param_view("weight")
    bias = param_view("bias")
    out_features = attr_view("out_features")
    in_features = attr_view("in_features")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.out_features if role == "out" else module.in_features)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"out": (("weight", 0), ("bias", 0)), "in": (("weight", 1),)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The weight dim whose slices belong to the features of ``role`` (for importance)."""
        return ("weight", 0 if role == "out" else 1)

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {
            "out_features": widths.get("out", self.dynamic_original("out_features")),
            "in_features": widths.get("in", self.dynamic_original("in_features")),
        }


class DynamicEmbedding(DynamicModule, nn.Embedding):
    """Dynamic ``nn.Embedding``: ``out`` slices the embedding dim (weight dim 1); the vocabulary stays."""

    dynamic_roles = {"out": "embedding_dim"}
    dynamic_flops_tensor = None  # a lookup: FlopCounterMode counts no FLOPs

    weight = param_view("weight")
    embedding_dim = attr_view("embedding_dim")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.embedding_dim)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"out": (("weight", 1),)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        return ("weight", 1)

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {"embedding_dim": widths.get("out", self.dynamic_original("embedding_dim"))}
