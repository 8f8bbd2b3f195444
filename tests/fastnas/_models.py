"""Small real models for the FastNAS tests (importable as ``tests.fastnas._models:FACTORY``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modeopt_autonas.space import get_search_space

INPUT_SHAPE = (1, 3, 8, 8)


class TinyCNN(nn.Module):
    """conv-bn-relu x3 (16/32/64 wide, stride 2 in the middle) + global pool + linear head."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 5) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(3, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def tiny_cnn() -> TinyCNN:
    """A seeded TinyCNN with non-trivial BatchNorm statistics (a CLI ``--model`` factory)."""
    torch.manual_seed(0)
    model = TinyCNN()
    model.train()
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.momentum = None  # cumulative average: statistics that fit the data, as after training
    with torch.no_grad():
        for x, _ in batches(8, seed=7):
            model(x)
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.momentum = 0.1
    model.eval()
    return model


def conv_chain() -> nn.Sequential:
    """Five conv-bn-relu layers at three resolutions (16x16 input): early layers cost FLOPs, late ones
    params, so a joint FLOPs/params budget has several good trade-offs."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = 3
    for out, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
        layers += [nn.Conv2d(width, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5)).eval()


def batches(n: int, seed: int = 1, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed ``(x, y)`` batches for TinyCNN."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, *INPUT_SHAPE[1:], generator=gen) * 2 + 0.5, torch.randint(0, 5, (batch_size,), generator=gen))
        for _ in range(n)
    ]


class WidthScore:
    """A score computed from the active widths alone: ``100 - sum(penalty[name](width))``.

    Makes every drop known in advance; ``calls`` records the subnet config at each evaluation.
    """

    def __init__(self, penalty: dict[str, Callable[[int], float]]) -> None:
        self.penalty = penalty
        self.calls: list[dict[str, int]] = []

    def __call__(self, model: nn.Module) -> float:
        config = get_search_space(model).config()
        self.calls.append(dict(config))
        return 100.0 - sum(f(config[name]) for name, f in self.penalty.items())


def output_energy(model: nn.Module) -> float:
    """A ``--score`` function for the CLI tests: mean squared logit on fixed inputs (eval mode)."""
    x = torch.randn(8, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(3))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(model(x).pow(2).mean())
    model.train(was_training)
    return value
