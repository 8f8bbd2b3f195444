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

__all__ = ["DigitsResNet", "accuracy", "digits_loaders", "train_epochs"]


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


def digits_loaders(
    batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0, image_size: int = 8
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over scikit-learn's 1,797 digits, scaled to [0, 1], N x 1 x S x S.

    ``image_size`` other than 8 resizes the 8x8 images bilinearly (16: the workload of the ModelOpt
    comparison in ``docs/benchmarks.md``, 52.6 MFLOPs per image for :class:`DigitsResNet`).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=batch_size, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=256)
    return train, val


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
) -> None:
    """Plain SGD + cosine schedule training (an ordinary loop: supernet sampling hooks work unchanged)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
