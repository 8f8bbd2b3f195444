"""Building the timm models of ``timm_cases`` for the coverage checks (random weights, enlivened)."""

from __future__ import annotations

import torch
from torch import nn

from tests.autonas._zoo_cases import enliven

from .timm_cases import CASES, TimmCase

__all__ = ["build_timm", "case", "timm_input"]

_BY_NAME = {c.name: c for c in CASES}


def case(name: str) -> TimmCase:
    return _BY_NAME[name]


def timm_input(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = _BY_NAME[name].input_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def build_timm(name: str, seed: int = 0) -> nn.Module:
    """The enlivened timm model ``name`` (10 classes) in eval mode."""
    import timm

    c = _BY_NAME[name]
    torch.manual_seed(seed)
    kwargs = {"img_size": c.img_size} if c.img_size else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    enliven(model, timm_input(name, batch=2, seed=seed + 1), seed)
    return model.eval()
