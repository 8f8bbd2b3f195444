"""Dynamic normalisation layers: batch/instance norms, LayerNorm (last dim) and GroupNorm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..hparam import _EPOCH
from .base import DynamicModule, attr_view, buffer_view, param_view

__all__ = [
    "DynamicBatchNorm1d",
    "DynamicBatchNorm2d",
    "DynamicBatchNorm3d",
    "DynamicGroupNorm",
    "DynamicInstanceNorm1d",
    "DynamicInstanceNorm2d",
    "DynamicInstanceNorm3d",
    "DynamicLayerNorm",
    "DynamicSyncBatchNorm",
]


def _stat_view(slot: int, name: str) -> property:
    base = buffer_view(name)

    def get(self: DynamicModule) -> torch.Tensor | None:
        gathered = self.__dict__.get("_dyn_stats")
        return base.fget(self) if gathered is None else gathered[slot]  # type: ignore[misc]

    return property(get, doc=base.__doc__)


class _DynamicChannelNorm(DynamicModule):
    """Batch/instance norm over a channel dim (dim 1) with searchable ``num_features``."""

    dynamic_roles = {"features": "num_features"}
    dynamic_flops_tensor = None  # FlopCounterMode attributes no FLOPs to normalisation

    weight = param_view("weight")
    bias = param_view("bias")
    running_mean = _stat_view(0, "running_mean")
    running_var = _stat_view(1, "running_var")
    num_features = attr_view("num_features")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.num_features)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"features": (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0))}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The affine weight, whose entries belong to the channels (for importance)."""
        return ("weight", 0) if self._parameters.get("weight") is not None else None

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        return {"num_features": widths["features"]}

    def _dyn_plan_extra(self) -> Any:
        # a gathered (concat) feature index makes the running stats copies, so training-mode
        # updates must be written back explicitly
        ix = self.__dict__["_dyn_dims"]["features"].index(self._dyn_device())
        return ix if isinstance(ix, torch.Tensor) else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        plan = self.__dict__["_dyn_plan"]
        if plan is None or plan.epoch != _EPOCH[0]:
            plan = self._dyn_sync()
        ix = plan.extra
        mean, var = self._buffers.get("running_mean"), self._buffers.get("running_var")
        if ix is None or not self.training or mean is None or var is None:
            return super().forward(input)
        with torch.no_grad():
            gathered = (mean.index_select(0, ix), var.index_select(0, ix))
        self.__dict__["_dyn_stats"] = gathered
        try:
            out = super().forward(input)
        finally:
            del self.__dict__["_dyn_stats"]
        with torch.no_grad():
            mean.index_copy_(0, ix, gathered[0])
            var.index_copy_(0, ix, gathered[1])
        return out


class DynamicBatchNorm1d(_DynamicChannelNorm, nn.BatchNorm1d):
    """Dynamic ``nn.BatchNorm1d``."""


class DynamicBatchNorm2d(_DynamicChannelNorm, nn.BatchNorm2d):
    """Dynamic ``nn.BatchNorm2d``."""


class DynamicBatchNorm3d(_DynamicChannelNorm, nn.BatchNorm3d):
    """Dynamic ``nn.BatchNorm3d``."""


class DynamicSyncBatchNorm(_DynamicChannelNorm, nn.SyncBatchNorm):
    """Dynamic ``nn.SyncBatchNorm``."""


class DynamicInstanceNorm1d(_DynamicChannelNorm, nn.InstanceNorm1d):
    """Dynamic ``nn.InstanceNorm1d``."""


class DynamicInstanceNorm2d(_DynamicChannelNorm, nn.InstanceNorm2d):
    """Dynamic ``nn.InstanceNorm2d``."""


class DynamicInstanceNorm3d(_DynamicChannelNorm, nn.InstanceNorm3d):
    """Dynamic ``nn.InstanceNorm3d``."""


class DynamicLayerNorm(DynamicModule, nn.LayerNorm):
    """Dynamic ``nn.LayerNorm``: the last dim of ``normalized_shape`` is searchable."""

    dynamic_roles = {"features": "num_features"}
    dynamic_flops_tensor = None

    weight = param_view("weight")
    bias = param_view("bias")
    normalized_shape = attr_view("normalized_shape")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.normalized_shape[-1])

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"features": (("weight", -1), ("bias", -1))}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The affine weight's last dim, whose entries belong to the features (for importance)."""
        return ("weight", -1) if self._parameters.get("weight") is not None else None

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        shape = tuple(self.dynamic_original("normalized_shape"))
        return {"normalized_shape": (*shape[:-1], widths["features"])}


class DynamicGroupNorm(DynamicModule, nn.GroupNorm):
    """Dynamic ``nn.GroupNorm``: the group size stays fixed, ``num_groups = width // group size``."""

    dynamic_roles = {"features": "num_channels"}
    dynamic_flops_tensor = None

    weight = param_view("weight")
    bias = param_view("bias")
    num_channels = attr_view("num_channels")
    num_groups = attr_view("num_groups")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.num_channels)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {"features": (("weight", 0), ("bias", 0))}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The affine weight, whose entries belong to the channels (for importance)."""
        return ("weight", 0) if self._parameters.get("weight") is not None else None

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        width = widths["features"]
        group_size = self.dynamic_original("num_channels") // self.dynamic_original("num_groups")
        return {"num_channels": width, "num_groups": width // group_size}
