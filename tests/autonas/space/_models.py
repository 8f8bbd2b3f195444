"""Tiny real models, their hand-built structures, and an independent reference for subnets.

The reference (``masked_reference``) never slices anything: it copies the *unconverted* model and
zeroes the input columns of every consumer for inactive channels, zeroes the outer ring of cropped
kernels, and replaces dropped blocks by ``nn.Identity``. For per-channel layers that computes exactly
what the subnet computes, so it checks the slice plans without reusing their code.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.structure import SpaceStructure

from ._structures import StructureBuilder

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class ConvChain(nn.Module):
    """c1 -> n1 -> relu -> c2 (grouped or not) -> n2 -> relu -> c3, in 1/2/3-d, plain or transposed."""

    def __init__(self, dim: int, transposed: bool, groups: int) -> None:
        super().__init__()
        conv = CONVT[dim] if transposed else CONV[dim]
        extra = {"stride": 2, "output_padding": 1} if transposed else {}
        self.c1 = conv(4, 8, 3, padding=1, **extra)
        self.n1 = BN[dim](8)
        self.c2 = conv(8, 8, 3, padding=1, groups=groups, bias=False)
        self.n2 = BN[dim](8)
        self.c3 = conv(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.n1(self.c1(x)).relu()
        x = self.n2(self.c2(x)).relu()
        return self.c3(x)


def conv_chain_structure(model: ConvChain) -> SpaceStructure:
    b = StructureBuilder()
    g1 = b.group(8)
    b.chain("c1", b.frozen(4), g1)
    b.bind("n1", "features", g1)
    g2 = g1 if model.c2.groups > 1 else b.group(8)
    b.chain("c2", g1, g2)
    b.bind("n2", "features", g2)
    b.chain("c3", g2, b.frozen(6))
    return b.build()


class ConcatNet(nn.Module):
    """Two branches concatenated into a BN and a conv, then flattened into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.c = nn.Conv2d(20, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(20 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(torch.cat([self.a(x), self.b(x)], 1)).relu()
        z = self.c(y).mean((2, 3))
        return torch.cat([z, self.fc(self.pool(y).flatten(1))], 1)


def concat_structure() -> SpaceStructure:
    b = StructureBuilder()
    gin, ga, gb = b.frozen(3), b.group(8), b.group(12)
    b.chain("a", gin, ga)
    b.chain("b", gin, gb)
    b.bind("bn", "features", ga, gb)
    b.bind("c", "in", ga, gb)
    b.bind("c", "out", b.frozen(6))
    b.bind("fc", "in", (ga, 4), (gb, 4))
    b.bind("fc", "out", b.frozen(5))
    return b.build()


class MLP(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear on (batch, tokens, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.ln = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.nn.functional.gelu(self.fc2(torch.nn.functional.gelu(self.ln(self.fc1(x))))))


def mlp_structure() -> SpaceStructure:
    b = StructureBuilder()
    g1, g2 = b.group(32), b.group(16)
    b.chain("fc1", b.frozen(8), g1)
    b.bind("ln", "features", g1)
    b.chain("fc2", g1, g2)
    b.chain("fc3", g2, b.frozen(4))
    return b.build()


class NormNet(nn.Module):
    """conv -> (GroupNorm | InstanceNorm) -> relu -> conv."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = (
            nn.GroupNorm(4, 16) if norm == "group" else nn.InstanceNorm2d(16, affine=True, track_running_stats=True)
        )
        self.c2 = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.norm(self.c1(x)).relu())


def norm_structure() -> SpaceStructure:
    b = StructureBuilder()
    g = b.group(16)
    b.chain("c1", b.frozen(3), g)
    b.bind("norm", "features", g)
    b.chain("c2", g, b.frozen(5))
    return b.build()


class Residual(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))


class DepthNet(nn.Module):
    """Stem, a sequential of residual blocks (elastic depth), pooled linear head."""

    def __init__(self, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(*[Residual(8, 12) for _ in range(blocks)])
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.bn(self.stem(x)).relu()).mean((2, 3)))


def depth_structure(model: DepthNet, skippable: tuple[int, ...] = (1, 2, 3)) -> SpaceStructure:
    b = StructureBuilder()
    s = b.group(8)
    b.chain("stem", b.frozen(3), s)
    b.bind("bn", "features", s)
    for i in range(len(model.blocks)):
        h = b.group(12)
        b.chain(f"blocks.{i}.conv1", s, h)
        b.bind(f"blocks.{i}.bn1", "features", h)
        b.chain(f"blocks.{i}.conv2", h, s)
        b.bind(f"blocks.{i}.bn2", "features", s)
    b.chain("fc", s, b.frozen(5))
    b.depth_spec("blocks", skippable)
    return b.build()


def masked_reference(original: nn.Module, space: SearchSpace) -> nn.Module:
    """A plain copy of ``original`` computing what ``space``'s active subnet computes (see module doc)."""
    ref = copy.deepcopy(original)
    modules = dict(ref.named_modules())
    sizes = {g.id: g.size for g in space.structure.groups}
    with torch.no_grad():
        for b in space.structure.bindings:
            m = modules[b.module]
            if b.role != "in" or getattr(m, "groups", 1) > 1:
                continue
            if isinstance(m, nn.Linear):
                dim = 1
            else:
                dim = 0 if m.transposed else 1
            offset = 0
            for s in b.segments:
                k = space.group_hparam(s.group).active
                m.weight.narrow(dim, offset + k * s.repeat, (sizes[s.group] - k) * s.repeat).zero_()
                offset += sizes[s.group] * s.repeat
        for name, hp in space.named_hparams(True):
            if name.endswith(".kernel_size") and hp.active < hp.original:
                w = modules[name.rsplit(".", 1)[0]].weight
                cut = (hp.original - hp.active) // 2
                for d in range(2, w.ndim):
                    w.narrow(d, 0, cut).zero_()
                    w.narrow(d, w.shape[d] - cut, cut).zero_()
        for seq, hp in space.depth_hparams().items():
            for i in range(hp.active, hp.original):
                modules[seq][i] = nn.Identity()
    return ref


def random_config(space: SearchSpace, draw: object) -> dict[str, int]:
    """A random config drawn with hypothesis ``data.draw``."""
    from hypothesis import strategies as st

    return {name: draw(st.sampled_from(hp.choices)) for name, hp in space.named_hparams(True)}  # type: ignore[operator]
