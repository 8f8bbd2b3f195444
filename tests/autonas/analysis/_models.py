"""Small hand-written models exercising one tying pattern each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """``x + f(x)`` with a shape-preserving ``f``."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, mid, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Down(nn.Module):
    """A strided block with a conv shortcut (not skippable)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = conv_bn(cin, cout, stride=2)
        self.short = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.stage1 = nn.Sequential(Residual(8, 6), Residual(8, 5))
        self.stage2 = nn.Sequential(Down(8, 12), Residual(12, 7), Residual(12, 9))
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConcatNet(nn.Module):
    """Two branches concatenated, then a nested concat ``cat([a, cat([b, c])])``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 6)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.mix = nn.Conv2d(9, 7, 1)
        self.c = nn.Conv2d(7, 3, 1)
        self.d = nn.Conv2d(7, 2, 1)
        self.bn = nn.BatchNorm2d(4 + 3 + 2)
        self.head = nn.Conv2d(9, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a = self.a(x)
        y = self.mix(torch.cat([a, F.relu(self.b(x))], dim=1))
        z = torch.cat([a, torch.cat([self.c(y), self.d(y)], 1)], 1)
        return self.head(F.relu(self.bn(z))).mean((2, 3))


class DepthwiseNet(nn.Module):
    """Expand conv -> depthwise conv -> grouped conv (in == out) -> project."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 16)
        self.project = nn.Conv2d(16, 6, 1)
        self.odd = nn.Conv2d(6, 8, 3, padding=1, groups=2)  # in != out: frozen
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.expand(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = self.project(self.gn(self.grouped(x)))
        return self.fc(self.odd(x).mean((2, 3)))


class SEBlock(nn.Module):
    """Squeeze-excitation with convs (``x * s``, s of shape N,C,1,1)."""

    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class SELinear(nn.Module):
    """Squeeze-excitation with linears and ``view(b, c, 1, 1)``."""

    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        y = x.mean((2, 3))
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 12)
        self.se = SEBlock(12, 4)
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1)
        self.se2 = SELinear(10, 3)
        self.out = nn.Conv2d(10, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.se2(self.conv2(self.se(self.conv(x)))))


class FlattenNet(nn.Module):
    """Conv map flattened into a Linear: after a 3x3 adaptive pool (repeat 9) and via ``view``."""

    def __init__(self, use_view: bool = False) -> None:
        super().__init__()
        self.use_view = use_view
        self.features = nn.Sequential(conv_bn(3, 8), nn.AdaptiveAvgPool2d(3))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(8 * 9, 20), nn.ReLU(), nn.Linear(20, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1) if self.use_view else torch.flatten(x, 1)
        return self.classifier(x)


class NeXtBlock(nn.Module):
    """ConvNeXt-style: depthwise conv, permute to NHWC, LayerNorm + MLP over the last dim, permute back."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, hidden)
        self.pw2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class NeXtNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.blocks = nn.Sequential(NeXtBlock(8, 32), NeXtBlock(8, 24))
        self.head = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((-2, -1)))


class TinyViT(nn.Module):
    """Patch-embedding conv -> tokens (flatten(2).transpose) -> residual MLP blocks -> mean -> head."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.ln1 = nn.LayerNorm(dim)
        self.mlp1 = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
        self.ln2 = nn.LayerNorm(dim)
        self.mlp2 = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.mlp1(self.ln1(x))
        x = x + self.mlp2(self.ln2(x))
        return self.head(x.mean(dim=1))


class Unsupported(nn.Module):
    """Ops the analysis does not understand: they must freeze, never raise."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(4, 6, 1)
        self.d = nn.Conv2d(6, 6, 1)
        self.e = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        y = torch.einsum("nchw,nchw->nchw", x, x)  # unknown op
        y = self.b(y)
        left, _ = y.chunk(2, dim=1)  # split along the channels
        z = self.c(left)
        z = z + torch.roll(z, 1, dims=1)  # unknown op feeding an add
        z = self.d(z)
        return self.e(z[:, :4].repeat(1, 2, 1, 1)[:, :6])  # channel indexing
