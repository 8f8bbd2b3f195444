"""A third-party layer type (not a torch layer) and its dynamic class, shared by the custom-layer tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modeopt_autonas.space import DynamicModule, LayerSpec, LayerType, attr_view, param_view


class ScaledLinear(nn.Module):
    """A bias-free linear layer with a learnt per-output scale."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)
        self.scale = nn.Parameter(torch.rand(out_features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight) * self.scale


class DynamicScaledLinear(DynamicModule, ScaledLinear):
    """Its dynamic version: ``out`` slices weight rows and scale, ``in`` slices weight columns."""

    dynamic_roles = {"out": "out_features", "in": "in_features"}
    weight = param_view("weight")
    scale = param_view("scale")
    out_features = attr_view("out_features")
    in_features = attr_view("in_features")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.out_features if role == "out" else module.in_features)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"out": (("weight", 0), ("scale", 0)), "in": (("weight", 1),)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int]:
        return ("weight", 0 if role == "out" else 1)

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {
            "out_features": widths.get("out", self.dynamic_original("out_features")),
            "in_features": widths.get("in", self.dynamic_original("in_features")),
        }


#: the one record that makes it searchable (follows the nn.Linear rules, globs included)
SCALED_LINEAR = LayerType(
    ScaledLinear, lambda m: LayerSpec("producer", -1, -1), DynamicScaledLinear, rules="features"
)
