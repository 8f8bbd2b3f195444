"""Dynamic ``nn.Sequential`` with elastic depth: depth ``d`` runs (and exports) the first ``d`` children."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..hparam import _EPOCH, Hparam
from .base import DynamicModule

__all__ = ["DynamicBlock", "DynamicSequential"]


class DynamicSequential(DynamicModule, nn.Sequential):
    """Dynamic ``nn.Sequential``. Iteration and ``len()`` still see every child (so ``state_dict``,
    ``named_modules`` and optimisers keep the full supernet); only ``forward`` and export stop at
    ``depth``."""

    dynamic_flops_tensor = None

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {}

    def _dyn_extra_hparams(self) -> tuple[Hparam, ...]:
        return (self.__dict__["_dyn_depth"],)

    def _dyn_plan_extra(self) -> Any:
        depth = self.__dict__["_dyn_depth"]
        if depth.active == depth.original:
            return None
        return list(self._modules.values())[: depth.active]

    @property
    def depth(self) -> int:
        """The number of leading children that run."""
        return self.__dict__["_dyn_depth"].active

    def forward(self, input: Any) -> Any:
        plan = self.__dict__["_dyn_plan"]
        if plan is None or plan.epoch != _EPOCH[0]:
            plan = self._dyn_sync()
        if plan.extra is None:
            return super().forward(input)
        for module in plan.extra:
            input = module(input)
        return input

    def _dyn_export(self, tied: dict[int, list[nn.Parameter]] | None = None) -> None:
        depth = self.depth
        super()._dyn_export(tied)
        for key in list(self._modules)[depth:]:
            del self._modules[key]


class DynamicBlock(DynamicModule):
    """A block of a block list (a transformer layer) that can be dropped: while it is not kept (its own
    ``keep`` hparam is 0, or its ``nn.ModuleList``'s depth is at most its index) its forward returns its
    input (the first argument) unchanged; export removes it from its container.

    It is a mixin over the block's own class (the block's forward, decorators included, runs when kept).
    """

    dynamic_flops_tensor = None

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        return {}

    def _dyn_extra_hparams(self) -> tuple[Hparam, ...]:
        return (self.__dict__["_dyn_keep"],)

    @property
    def kept(self) -> bool:
        """Whether the block runs in the active subnet: its hparam (own ``keep``, or its container's
        depth) exceeds its index."""
        d = self.__dict__
        return bool(d["_dyn_keep"].active > d["_dyn_index"])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.kept:
            return super().forward(*args, **kwargs)
        return args[0] if args else next(iter(kwargs.values()))


class DynamicTensorsBlock(DynamicBlock):
    """A droppable block that also holds tensors sliced with a channel group (a ConvNeXt block's
    ``layer_scale``): :class:`DynamicBlock`'s dropping, with the tensor roles of
    :class:`~modeopt_autonas.space.dynamic.tensors.DynamicTensors`."""

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        return None  # a scale says little about a channel's importance; producers decide
