"""Small real models and real data (scikit-learn digits) shared by the AutoNAS mode tests."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import modeopt_core as mo
from modeopt_fastnas.digits import DigitsResNet

SMALL_WIDTHS = (8, 16, 32)
DUMMY = torch.zeros(1, 1, 8, 8)


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def digits_batches(n_batches: int, batch_size: int = 64, offset: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` fixed (unshuffled) batches of real digit images, starting at image ``offset``."""
    x, y = _digits()
    out = []
    for i in range(n_batches):
        s = offset + i * batch_size
        out.append((x[s : s + batch_size], y[s : s + batch_size]))
    assert all(len(b[0]) == batch_size for b in out), "not enough digits for these batches"
    return out


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The last 297 digits (never used by digits_batches with offset < 1500)."""
    x, y = _digits()
    return x[1500:], y[1500:]


def accuracy_on(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], float]:
    """A score function: top-1 accuracy in percent on fixed data (eval mode, train flag restored)."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        was = model.training
        model.eval()
        acc = (model(x).argmax(1) == y).float().mean().item() * 100
        model.train(was)
        return acc

    return score


def supernet(seed: int = 0, widths: tuple[int, int, int] = SMALL_WIDTHS, config: dict[str, Any] | None = None) -> nn.Module:
    """A freshly built DigitsResNet (seeded weights) converted by ``autonas``."""
    torch.manual_seed(seed)
    return mo.apply_mode(DigitsResNet(widths), [("autonas", config or {})])


def fresh(widths: tuple[int, int, int] = SMALL_WIDTHS) -> nn.Module:
    """An unconverted DigitsResNet with other random weights (the target of a restore)."""
    torch.manual_seed(12345)
    return DigitsResNet(widths)


def train_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float = 0.05) -> None:
    """One SGD step per batch, an ordinary loop (model.train(), forward, backward, step)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
