"""``DynamicTensors``: any module whose own tensors are sliced with a channel group (``"tensor:<name>"`` roles).

A layer scale (``x * self.gamma``), a learnt per-channel bias added to a stream, or a ``[C, 1, 1]``
scale parameter is not a layer, but its tensor has the stream's width and must shrink with it. The
structure binds such a tensor to the stream's group; the module (often a container, e.g. a ConvNeXt
block) becomes a ``DynamicTensors`` whose properties serve the active slices, and its own forward and
its children run unchanged.
"""

from __future__ import annotations

from typing import Any

from .base import DynamicModule

__all__ = ["DynamicTensors"]


class DynamicTensors(DynamicModule):
    """Mixin of modules that are not layers but hold tensors sliced with a group (its layout comes from
    the structure's ``tensors`` of each binding; it has no attributes that follow the subnet)."""

    dynamic_flops_tensor = None  # its FLOPs are those of its children (measured there) plus element-wise ops

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {}

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        raise NotImplementedError("a tensor role's width is the size of its tensor along its dim")

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        return None  # a scale says little about a channel's importance; producers decide
