"""An export-mode pair: ``sparse_magnitude`` masks small Linear weights, ``export_sparsity`` bakes the masks in.

``sparse_magnitude`` records one boolean mask per Linear in its metadata (tensors are stored as
tensors in the checkpoint). Once ``export_sparsity`` has multiplied the masks into the weights they
are dead weight in every later checkpoint, so the export mode compacts the closed mode's metadata to
the layer names alone; restore stays exact because the saved weights already hold the zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from modeopt_core import ModeConfig, ModeDescriptor


class SparseMagnitudeConfig(ModeConfig):
    """Config of ``sparse_magnitude``."""

    sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of each Linear's weights set to zero")


class ExportSparsityConfig(ModeConfig):
    """Config of ``export_sparsity`` (no options)."""


class _MaskedLinear(nn.Linear):
    """A Linear computing with ``weight * mask``; stays an ``nn.Linear`` (the mask is not a buffer:
    it lives in the mode's metadata, so the state dict keeps the plain Linear's keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.modeopt_mask, self.bias)


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if type(m) in (nn.Linear, _MaskedLinear)}


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = _linears(model)
    if sorted(layers) != sorted(masks):
        raise ValueError(f"model differs from the saved one: Linear layers {sorted(layers)} != {sorted(masks)}")
    for name, mask in masks.items():
        layers[name].__class__ = _MaskedLinear
        layers[name].modeopt_mask = mask


class SparseMagnitudeMode(ModeDescriptor):
    """Zero the smallest-magnitude weights of every Linear (unstructured sparsity, by masks)."""

    @property
    def name(self) -> str:
        return "sparse_magnitude"

    @property
    def config_class(self) -> type[ModeConfig]:
        return SparseMagnitudeConfig

    @property
    def export_mode(self) -> str | None:
        return "export_sparsity"

    def convert(self, model: nn.Module, config: Any, **mode_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        masks = {}
        for name, layer in _linears(model).items():
            k = int(layer.weight.numel() * config.sparsity)
            threshold = layer.weight.detach().abs().flatten().kthvalue(k).values if k else -1.0
            masks[name] = layer.weight.detach().abs() > threshold
        _apply_masks(model, masks)
        return model, {"masks": masks}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        if "masks" in metadata:
            _apply_masks(model, metadata["masks"])
        # compacted by export_sparsity: the saved weights hold the zeros, nothing to re-apply
        return model


class ExportSparsityMode(ModeDescriptor):
    """Multiply the masks into the weights and turn masked layers back into plain ``nn.Linear``."""

    @property
    def name(self) -> str:
        return "export_sparsity"

    @property
    def config_class(self) -> type[ModeConfig]:
        return ExportSparsityConfig

    @property
    def is_export_mode(self) -> bool:
        return True

    def convert(self, model: nn.Module, config: Any, **mode_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        for layer in _linears(model).values():
            if type(layer) is _MaskedLinear:
                # a new Parameter, not an in-place edit: a failed export can be rolled back
                layer.weight = nn.Parameter(layer.weight.detach() * layer.modeopt_mask)
                layer.__class__ = nn.Linear
                del layer.modeopt_mask
        return model, {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        return self.convert(model, config)[0]

    def compact_closed_metadata(self, closed_metadata: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        # the masks are baked into the exported weights: keep only which layers were sparsified
        return {"layers": sorted(closed_metadata.get("masks", closed_metadata.get("layers", [])))}
