"""Learned channel projections that let a narrower (pruned) student layer be matched to its teacher layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ShapeMismatchError

__all__ = ["ADAPTERS_NAME", "ChannelAdapter"]

#: the submodule of the student that holds the adapters while it is distilled (``export_student`` drops it)
ADAPTERS_NAME = "modeopt_kd_adapters"


class ChannelAdapter(nn.Module):
    """``y = W x + b`` along ``dim``: maps ``in_channels`` student channels to ``out_channels`` teacher channels.

    A student narrower than ``in_channels`` (a smaller subnet of a supernet, whose active channels are
    the leading ones) uses the leading columns of ``W``. Initialised deterministically (seeded), so
    converting twice gives the same adapter and the global RNG is left alone.
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int, *, seed: int = 0,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.dim = in_channels, out_channels, dim
        weight = torch.empty(out_channels, in_channels, dtype=dtype)
        bias = torch.empty(out_channels, dtype=dtype)
        if device is None or torch.device(device).type != "meta":
            gen = torch.Generator().manual_seed(seed)
            bound = 1.0 / math.sqrt(in_channels)  # nn.Linear's default initialisation range
            weight.uniform_(-bound, bound, generator=gen)
            bias.uniform_(-bound, bound, generator=gen)
        self.weight = nn.Parameter(weight.to(device) if device is not None else weight)
        self.bias = nn.Parameter(bias.to(device) if device is not None else bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[self.dim]
        if channels > self.in_channels:
            raise ShapeMismatchError(
                f"the student output has {channels} channels along dim {self.dim}, but its adapter was sized for "
                f"{self.in_channels} (the subnet active when kd_loss was applied); apply kd_loss while the largest "
                "subnet you will train is selected"
            )
        weight = self.weight if channels == self.in_channels else self.weight[:, :channels]
        return torch.movedim(F.linear(torch.movedim(x, self.dim, -1), weight, self.bias), -1, self.dim)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels} along dim {self.dim}"
