"""Learned channel projections that let a narrower (pruned) student layer be matched to its teacher layer.

An adapter's weight and bias are registered as parameters of the student's root module, named
``modeopt_kd_adapter<i>_weight`` / ``_bias`` for pair ``i``: they are then in ``parameters()``
(optimisers, DDP), in ``state_dict()`` (checkpoints) and follow ``.to()``, without adding a
submodule (an ``nn.Sequential`` student runs every submodule it has).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ShapeMismatchError

__all__ = ["ADAPTER_PREFIX", "adapter_names", "new_adapter", "project"]

ADAPTER_PREFIX = "modeopt_kd_adapter"


def adapter_names(key: str) -> tuple[str, str]:
    """The root-parameter names of the weight and bias of pair ``key``'s adapter."""
    return f"{ADAPTER_PREFIX}{key}_weight", f"{ADAPTER_PREFIX}{key}_bias"


def new_adapter(in_channels: int, out_channels: int, *, seed: int, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> tuple[nn.Parameter, nn.Parameter]:
    """A fresh ``(weight (out, in), bias (out,))``, initialised like ``nn.Linear`` from a seeded generator.

    Seeded: applying the mode twice gives the same adapter, and the global RNG is left alone. On the
    ``meta`` device (a checkpoint's dry run) nothing is initialised.
    """
    weight = torch.empty(out_channels, in_channels, dtype=dtype)
    bias = torch.empty(out_channels, dtype=dtype)
    meta = device is not None and torch.device(device).type == "meta"
    if not meta:
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(in_channels)
        weight.uniform_(-bound, bound, generator=gen)
        bias.uniform_(-bound, bound, generator=gen)
    if device is not None:
        weight, bias = weight.to(device), bias.to(device)
    return nn.Parameter(weight), nn.Parameter(bias)


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dim: int) -> torch.Tensor:
    """``W x + b`` along ``dim``; a narrower ``x`` (a smaller subnet, active channels leading) uses W's leading columns."""
    channels, sized = x.shape[dim], weight.shape[1]
    if channels > sized:
        raise ShapeMismatchError(
            f"the student output has {channels} channels along dim {dim}, but its adapter was sized for {sized} (the "
            "subnet active when kd_loss was applied); apply kd_loss while the largest subnet you will train is selected"
        )
    if channels < sized:
        weight = weight[:, :channels]
    return torch.movedim(F.linear(torch.movedim(x, dim, -1), weight, bias), -1, dim)
