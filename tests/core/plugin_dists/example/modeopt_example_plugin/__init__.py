"""A third-party modeopt plugin: the ``halve_linear`` mode scales every Linear's weight by a factor, and
the export-mode pair ``sparse_magnitude`` / ``export_sparsity`` (in ``sparsity.py``).

modeopt finds it through the ``modeopt.plugins`` entry point declared in pyproject.toml; users never
import this module.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from modeopt_core import ModeConfig, ModeDescriptor, hookimpl

from .sparsity import ExportSparsityMode, SparseMagnitudeMode


class HalveLinearConfig(ModeConfig):
    """Config of the ``halve_linear`` mode."""

    factor: float = Field(default=0.5, gt=0, le=1, description="multiplier applied to Linear weights")


class _ScaledLinear(nn.Linear):
    """A Linear whose output is scaled; stays an ``nn.Linear`` for isinstance checks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.modeopt_factor


def _scale_all(model: nn.Module, factor: float) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            module.__class__ = _ScaledLinear
            module.modeopt_factor = factor
            names.append(name)
    return names


class HalveLinearMode(ModeDescriptor):
    """Scales the output of every ``nn.Linear``."""

    @property
    def name(self) -> str:
        return "halve_linear"

    @property
    def config_class(self) -> type[ModeConfig]:
        return HalveLinearConfig

    def convert(self, model: nn.Module, config: Any, **mode_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        return model, {"scaled": _scale_all(model, config.factor)}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        scaled = _scale_all(model, config.factor)
        if scaled != metadata["scaled"]:
            raise ValueError(f"model differs from the saved one: Linear layers {scaled} != {metadata['scaled']}")
        return model


@hookimpl
def modeopt_register_modes(register: Any) -> None:
    register(HalveLinearMode())
    register(SparseMagnitudeMode())
    register(ExportSparsityMode())
