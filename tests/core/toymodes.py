"""Small real modes used by the core tests (registered explicitly, not through entry points)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from modeopt_core import ModeConfig, ModeDescriptor, hookimpl


class ScaleConfig(ModeConfig):
    factor: float = Field(default=2.0, gt=0, description="output multiplier")


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


class ScaleMode(ModeDescriptor):
    """Wraps the model so its output is multiplied; export mode 'toy_unscale' closes it."""

    name = "toy_scale"  # type: ignore[assignment]
    config_class = ScaleConfig  # type: ignore[assignment]

    @property
    def next_modes(self) -> set[str] | None:
        return {"toy_unscale", "toy_tag"}

    @property
    def export_mode(self) -> str | None:
        return "toy_unscale"

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        if kw.get("fail"):
            raise RuntimeError("asked to fail")
        return _Scaled(model, config.factor), {"factor_tensor": torch.tensor([config.factor]), "shape": (1, 2)}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        return _Scaled(model, float(metadata["factor_tensor"][0]))

    def update_for_save(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> None:
        metadata["saved"] = metadata.get("saved", 0) + 1


class UnscaleMode(ModeDescriptor):
    name = "toy_unscale"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]

    @property
    def is_export_mode(self) -> bool:
        return True

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(model, _Scaled)
        model.factor = 1.0
        return model, {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        return self.convert(model, config)[0]


class TagConfig(ModeConfig):
    tag: str = "x"


class TagMode(ModeDescriptor):
    """Sets an attribute in place; may be applied anywhere, nothing after it is prohibited except scale."""

    name = "toy_tag"  # type: ignore[assignment]
    config_class = TagConfig  # type: ignore[assignment]

    @property
    def next_prohibited_modes(self) -> set[str]:
        return {"toy_scale"}

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        model.modeopt_tag = config.tag
        if kw.get("fail_after_mutation"):
            raise ValueError("broke half-way")
        return model, {"tag": config.tag}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        model.modeopt_tag = metadata["tag"]
        return model


class ToyPlugin:
    @hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(ScaleMode())
        register(UnscaleMode())
        register(TagMode())
