"""A small residual CNN on scikit-learn's digits (real data shipped with scikit-learn).

Used by the demo, the end-to-end tests and the benchmarks. scikit-learn is imported lazily: it is
only needed for :func:`digits_loaders`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsResNet", "accuracy", "digits_loaders", "digits_splits", "train_epochs"]


class _Block(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class DigitsResNet(nn.Module):
    """Stem + three residual stages (two blocks each) + linear head, for 1x8x8 digit images."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = nn.Sequential(_Block(w1, w1, 1), _Block(w1, w1, 1))
        self.layer2 = nn.Sequential(_Block(w1, w2, 2), _Block(w2, w2, 1))
        self.layer3 = nn.Sequential(_Block(w2, w3, 2), _Block(w3, w3, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _digits(seed: int, image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y, torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))


def digits_loaders(
    batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0, image_size: int = 8
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over scikit-learn's 1,797 digits, scaled to [0, 1], N x 1 x S x S.

    ``image_size`` other than 8 resizes the 8x8 images bilinearly (16: the workload of the ModelOpt
    comparison in ``docs/benchmarks.md``, 52.6 MFLOPs per image for :class:`DigitsResNet`).
    """
    x, y, perm = _digits(seed, image_size)
    n_val = int(len(x) * val_fraction)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=batch_size, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=256)
    return train, val


def digits_splits(
    test_fraction: float = 0.25, val_fraction: float = 0.15, seed: int = 0
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train, validation and test sets of the digits, for choosing settings without touching the test set.

    The test set is exactly the validation split of :func:`digits_loaders` (same ``seed`` and
    fraction); the validation set is carved out of its training split.
    """
    x, y, perm = _digits(seed)
    n_test, n_val = int(len(x) * test_fraction), int(len(x) * val_fraction)
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x[test], y[test])


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent (model put in eval mode; its train flag is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float = 0.05,
    on_epoch: Callable[[int], None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Plain SGD + cosine schedule training (an ordinary loop: supernet sampling hooks work unchanged).

    ``loss_fn(output, target)`` replaces the cross entropy (e.g. a distillation loss around it).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    loss_of = loss_fn or F.cross_entropy
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_of(model(x), y).backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
