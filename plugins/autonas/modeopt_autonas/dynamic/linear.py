"""Dynamic ``nn.Linear`` with elastic input and output features."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import DynamicModule, attr_view, param_view

__all__ = ["DynamicLinear"]


class DynamicLinear(DynamicModule, nn.Linear):
    """Dynamic ``nn.Linear``: ``out`` slices weight rows and bias, ``in`` slices weight columns."""

    _dyn_role_attrs = {"out": "out_features", "in": "in_features"}
    _dyn_rule_keys = ("features_ratio", "feature_divisor")

    weight = param_view("weight")
    bias = param_view("bias")
    out_features = attr_view("out_features")
    in_features = attr_view("in_features")

    @staticmethod
    def full_width(module: Any, role: str) -> int:
        return int(module.out_features if role == "out" else module.in_features)

    def _dyn_layout(self) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"out": (("weight", 0), ("bias", 0)), "in": (("weight", 1),)}

    def channel_weight(self, role: str) -> tuple[str, int] | None:
        """The weight dim whose slices belong to the features of ``role`` (for importance)."""
        return ("weight", 0 if role == "out" else 1)

    def _dyn_attrs(self) -> dict[str, Any]:
        d = self.__dict__
        dims = d["_dyn_dims"]
        return {
            "out_features": dims["out"].width() if "out" in dims else d["out_features"],
            "in_features": dims["in"].width() if "in" in dims else d["in_features"],
        }
