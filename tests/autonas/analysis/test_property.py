"""Random models from a small grammar of blocks: the analysis plus physical shrinking always runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeopt_autonas.space.analysis import analyze

from . import _models as M
from ._checks import assert_consistent
from ._slice_by_structure import check_slicing


class _Cat(nn.Module):
    def __init__(self, cin: int, a: int, b: int, nested: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, a, 1)
        self.b = nn.Conv2d(cin, b, 3, padding=1)
        self.c = nn.Conv2d(cin, b, 1) if nested else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.b(x) if self.c is None else torch.cat([self.b(x), self.c(x)], 1)
        return torch.cat([F.relu(self.a(x)), right], dim=1)


def _block(kind: tuple, cin: int) -> tuple[nn.Module, int]:
    name, *args = kind
    if name == "conv":
        return M.conv_bn(cin, args[0]), args[0]
    if name == "res":
        return M.Residual(cin, args[0]), cin
    if name == "cat":
        a, b, nested = args
        return _Cat(cin, a, b, nested), a + b * (2 if nested else 1)
    if name == "dw":
        return M.conv_bn(cin, cin, groups=cin), cin
    return M.SEBlock(cin, args[0]), cin


class _Net(nn.Module):
    def __init__(self, kinds: list[tuple], head: str) -> None:
        super().__init__()
        blocks: list[nn.Module] = [M.conv_bn(3, 4)]  # a stem, so no block reads the model input
        c = 4
        for kind in kinds:
            block, c = _block(kind, c)
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.fc = nn.Linear(c * (4 if head == "pool2" else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.head == "mean":
            return self.fc(x.mean((2, 3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2 if self.head == "pool2" else 1), 1))


_KINDS = st.one_of(
    st.tuples(st.just("conv"), st.integers(2, 6)),
    st.tuples(st.just("res"), st.integers(1, 4)),
    st.tuples(st.just("cat"), st.integers(1, 3), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("dw")),
    st.tuples(st.just("se"), st.integers(1, 3)),
)


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(_KINDS, min_size=1, max_size=6),
    head=st.sampled_from(["mean", "pool1", "pool2"]),
    seed=st.integers(0, 2**16),
)
def test_random_block_models_analyse_and_shrink(kinds, head, seed):
    torch.manual_seed(seed)
    model = _Net(kinds, head)
    result = analyze(model)
    assert_consistent(model, result)
    # In this grammar only the model's input and output constrain channels, except a residual add
    # onto a concatenation, which one channel group cannot express (a documented limitation).
    for group in result.report.frozen_groups:
        for reason in group.reasons:
            assert reason in ("fed by model input", "model output") or "different channel structure" in reason, group
    assert result.report.group_of("fc.out").reasons == ("model output",)
    check_slicing(model, result.structure, torch.randn(1, 3, 6, 6), seed=seed, rounds=1)
