"""Tiny real models for the distillation tests (importable by child processes: factory references)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FACTORY_CALLS = {"teacher": 0}
INPUT = (2, 1, 8, 8)


class SmallCNN(nn.Module):
    """conv-bn-relu x2, pooled, linear head: ``features`` (N, width, 4, 4) then ``head`` logits (N, 10)."""

    def __init__(self, width: int = 8, bn: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), norm(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), norm(width), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class DictOutput(nn.Module):
    """Returns a dict (like a Hugging Face ModelOutput): ``{"logits": ..., "hidden": (..., ...)}``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = SmallCNN(width)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        feats = self.body.features(x)
        logits = self.body.head(torch.flatten(self.body.pool(feats), 1))
        return OrderedDict(logits=logits, hidden=(feats, F.relu(feats)))


class Twice(nn.Module):
    """Runs ``block`` twice in one forward (its output is ambiguous for a layer pair)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x)))


class InplaceInput(nn.Module):
    """Modifies its input in place (the teacher would then see another batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mul_(2))


def student(width: int = 8, bn: bool = True, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(width, bn)


def teacher() -> SmallCNN:
    """The factory tests reference as ``tests.distill._models:teacher`` (counts its calls)."""
    FACTORY_CALLS["teacher"] += 1
    torch.manual_seed(123)
    return SmallCNN(16).eval()


def teacher_no_bn() -> SmallCNN:
    torch.manual_seed(123)
    return SmallCNN(16, bn=False).eval()


def batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
