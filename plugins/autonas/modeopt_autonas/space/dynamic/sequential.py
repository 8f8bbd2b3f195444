"""Dynamic ``nn.Sequential`` with elastic depth: depth ``d`` runs (and exports) the first ``d`` children."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..hparam import _EPOCH, Hparam
from .base import DynamicModule

__all__ = ["DynamicSequential"]


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
