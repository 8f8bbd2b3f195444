"""torchvision models with random weights, built cheaply for analysis-only tests."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import nn
from torchvision import models

from modeopt_autonas.space.analysis import AnalysisResult, analyze

#: Constructor arguments that avoid torchvision's "init_weights will change" warnings.
_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"init_weights": True},
    "inception_v3": {"init_weights": True},
}


def build(name: str, *, meta: bool = True, **kwargs: Any) -> nn.Module:
    """``torchvision.models.<name>(weights=None)``; on the meta device when ``meta`` (no weight init
    cost, enough for fx tracing) unless the constructor needs real tensors (RegNet's width rounding)."""
    kwargs = {**_KWARGS.get(name, {}), **kwargs}
    ctor = getattr(models, name)
    if meta:
        try:
            with torch.device("meta"):
                return ctor(weights=None, **kwargs)
        except NotImplementedError:
            pass
    return ctor(weights=None, **kwargs)


@cache
def analyzed(name: str) -> tuple[nn.Module, AnalysisResult]:
    """A meta-device model and its analysis, shared by the tests of one session."""
    model = build(name)
    return model, analyze(model)
