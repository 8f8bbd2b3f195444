"""Elastic depth: trailing shape-preserving residual children of a Sequential, conservatively."""

from __future__ import annotations

import torch
from torch import nn

from modeopt_autonas.space.analysis import analyze

from . import _models as M
from ._zoo import analyzed


def _depth(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {d.module: d.skippable for d in analyze(model).structure.depth}


def _run_truncated(model: nn.Module, seq: nn.Sequential, keep: int, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` with ``seq`` cut to its first ``keep`` children (what depth ``keep`` means)."""
    original = list(seq._modules.items())
    try:
        for name, _ in original[keep:]:
            del seq._modules[name]
        with torch.no_grad():
            return model.eval()(x)
    finally:
        seq._modules.clear()
        seq._modules.update(original)


def test_trailing_residual_blocks_are_skippable_and_dropping_them_runs():
    model = M.ResNetLike()
    depth = _depth(model)
    assert depth == {"stage1": (0, 1), "stage2": (1, 2)}  # stage2.0 has a strided conv shortcut
    x = torch.randn(1, 3, 8, 8)
    for keep in (0, 1):
        assert _run_truncated(model, model.stage1, keep, x).shape == (1, 10)
    assert _run_truncated(model, model.stage2, 1, x).shape == (1, 10)


def test_model_that_is_a_sequential_of_residual_blocks():
    assert _depth(nn.Sequential(M.Residual(4, 3), M.Residual(4, 2))) == {"": (0, 1)}


def test_only_the_trailing_run_counts():
    model = nn.Sequential(M.Residual(4, 3), nn.Conv2d(4, 4, 1), M.Residual(4, 2), M.Residual(4, 2))
    assert _depth(model) == {"": (2, 3)}
    assert _depth(nn.Sequential(M.Residual(4, 3), nn.Conv2d(4, 4, 1))) == {}


class _ReachesIn(nn.Module):
    """The parent reads a parameter of the last block: dropping it would break that code."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(M.Residual(4, 3), M.Residual(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * self.blocks[1].bn2.weight.mean()


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(M.Residual(4, 3), M.Residual(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.blocks(x))


class _ChildAlsoUsedElsewhere(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(M.Residual(4, 3), M.Residual(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + self.blocks[1](x)


class _CustomSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x) * 0.5
        return x


def test_conservative_cases_get_no_depth():
    assert _depth(_ReachesIn()) == {}
    assert _depth(_CalledTwice()) == {}
    assert _depth(_CustomSequential(M.Residual(4, 3), M.Residual(4, 3))) == {}
    assert _depth(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))) == {}


def test_child_called_outside_its_sequential_ends_the_run():
    # blocks[1] is called twice (inside and outside the Sequential), so the trailing run is empty.
    assert _depth(_ChildAlsoUsedElsewhere()) == {}


def test_zoo_depth():
    effnet = {d.module: d.skippable for d in analyzed("efficientnet_b0")[1].structure.depth}
    assert effnet == {
        "features.2": (1,),
        "features.3": (1,),
        "features.4": (1, 2),
        "features.5": (1, 2),
        "features.6": (1, 2, 3),
    }
    assert not analyzed("mobilenet_v2")[1].structure.depth  # its Sequential ends with a plain conv
    swin = {d.module: d.skippable for d in analyzed("swin_t")[1].structure.depth}
    assert swin == {
        "features.1": (0, 1),
        "features.3": (0, 1),
        "features.5": tuple(range(6)),
        "features.7": (0, 1),
        "features": (7,),  # the last stage (a Sequential of residual blocks) is shape-preserving as a whole
    }
