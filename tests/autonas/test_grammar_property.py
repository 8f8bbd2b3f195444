"""Random models from a grammar of blocks, end to end through the ``autonas`` mode.

Blocks: conv (elastic kernel), basic residual, residual with a projection shortcut (and stride),
concatenation, inverted residual with a depthwise conv, squeeze-excitation, grouped conv, and a
stage of residual blocks (elastic depth). Heads: global pool -> Linear, pool -> flatten -> hidden
Linear -> Linear, pool -> LayerNorm -> Linear. For every model: the max subnet is the original model,
any sampled subnet runs and its export computes the same outputs, and the analytic FLOPs/params
match ``FlopCounterMode``/the parameter count of the export.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_autonas.space.dynamic import is_dynamic
from tests.autonas._zoo_cases import enliven

pytestmark = pytest.mark.filterwarnings("ignore::modeopt_autonas.StaleBatchNormWarning")

_SIZE = 12  # input pixels: two stride-2 blocks still leave 3x3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class _Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the input (or a 1x1 projection of it when the shape changes)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, stride=stride),
            nn.Conv2d(hidden, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + skip)


class _Concat(nn.Module):
    def __init__(self, cin: int, a: int, b: int) -> None:
        super().__init__()
        self.left = _conv_bn(cin, a, 1)
        self.right = _conv_bn(cin, b, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class _InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 (optionally SE) -> 1x1 project, plus the input."""

    def __init__(self, c: int, expand: int, se: bool) -> None:
        super().__init__()
        hidden = c * expand
        layers: list[nn.Module] = [_conv_bn(c, hidden, 1), _conv_bn(hidden, hidden, 3, groups=hidden)]
        if se:
            layers.append(_SqueezeExcite(hidden, max(1, hidden // 4)))
        layers += [nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _block(kind: tuple, cin: int) -> tuple[nn.Module, int]:
    name, *args = kind
    if name == "conv":
        cout, k = args
        return _conv_bn(cin, cout, k), cout
    if name == "res":
        return _Residual(cin, args[0], cin), cin
    if name == "proj":
        cout, stride = args
        return _Residual(cin, cout, cout, stride), cout
    if name == "cat":
        return _Concat(cin, *args), sum(args)
    if name == "inverted":
        return _InvertedResidual(cin, *args), cin
    if name == "se":
        return _SqueezeExcite(cin, args[0]), cin
    if name == "grouped":  # two groups when the width allows it; in == out or a new (even) width
        cout = cin if args[1] else 2 * args[0]
        return _conv_bn(cin, cout, 3, groups=2 if cin % 2 == 0 else 1), cout
    if name == "stage":
        n, hidden = args
        return nn.Sequential(*[_Residual(cin, hidden, cin) for _ in range(n)]), cin
    raise AssertionError(kind)


class _GrammarNet(nn.Module):
    def __init__(self, stem: int, kinds: list[tuple], head: str, classes: int = 5) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stem)
        c = stem
        blocks = []
        for kind in kinds:
            block, c = _block(kind, c)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        if head == "flatten":
            self.hidden = nn.Linear(c * 4, 12)
            self.fc = nn.Linear(12, classes)
        else:
            self.norm = nn.LayerNorm(c) if head == "norm" else nn.Identity()
            self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head == "flatten":
            return self.fc(F.relu(self.hidden(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))))
        return self.fc(self.norm(x.mean((2, 3))))


_WIDTH = st.integers(2, 12)
_KINDS = st.one_of(
    st.tuples(st.just("conv"), _WIDTH, st.sampled_from([1, 3, 5])),
    st.tuples(st.just("res"), _WIDTH),
    st.tuples(st.just("proj"), _WIDTH, st.sampled_from([1, 2])),
    st.tuples(st.just("cat"), _WIDTH, _WIDTH),
    st.tuples(st.just("inverted"), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("se"), st.integers(1, 4)),
    st.tuples(st.just("grouped"), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("stage"), st.integers(1, 3), _WIDTH),
)


def _rules(ratios: tuple[float, ...], divisor: int, kernels: tuple[int, ...]) -> dict:
    feature = {"features_ratio": ratios, "feature_divisor": divisor}
    return {
        "nn.Conv2d": {"channels_ratio": ratios, "channel_divisor": divisor, "kernel_size": kernels},
        "nn.BatchNorm2d": feature,
        "nn.Linear": feature,
        "nn.LayerNorm": feature,
        "nn.Sequential": {"min_depth": 1},
    }


def _measure(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    return y, counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@settings(max_examples=25, deadline=None)
@given(
    stem=st.integers(4, 12),
    kinds=st.lists(_KINDS, min_size=1, max_size=5).filter(
        lambda ks: sum(k[0] == "proj" and k[2] == 2 for k in ks) <= 2
    ),
    head=st.sampled_from(["mean", "flatten", "norm"]),
    ratios=st.sampled_from([(0.25, 0.5, 1.0), (0.5, 0.75, 1.0), (0.34, 0.67, 1.0)]),
    divisor=st.sampled_from([1, 2, 4]),
    kernels=st.sampled_from([(), (1, 3), (3, 5)]),
    seed=st.integers(0, 2**16),
)
# a concatenation [2 | 10] feeding a conv of two groups of 6: the inputs straddle the conv's groups
@example(stem=4, kinds=[("cat", 2, 10), ("grouped", 6, False)], head="mean", ratios=(0.25, 0.5, 1.0), divisor=2,
         kernels=(), seed=0)
def test_random_grammar_models_export_equal(stem, kinds, head, ratios, divisor, kernels, seed):
    torch.manual_seed(seed)
    model = _GrammarNet(stem, kinds, head)
    gen = torch.Generator().manual_seed(seed)
    enliven(model, torch.randn(4, 3, _SIZE, _SIZE, generator=gen), seed)
    model.eval()
    x = torch.randn(2, 3, _SIZE, _SIZE, generator=gen)
    with torch.no_grad():
        reference = model(x)

    try:
        model = mo.apply_mode(model, [("autonas", _rules(ratios, divisor, kernels))])
    except mo.ConvertError as e:
        # Legitimate only when every width is pinned, e.g. stem -> grouped conv with in != out (frozen
        # on both sides) -> head. The failed convert must leave the model as it was.
        assert "no searchable dimension" in str(e)
        event("no searchable dimension")
        assert not any(is_dynamic(m) for m in model.modules()) and not mo.applied_modes(model)
        with torch.no_grad():
            assert torch.equal(model(x), reference)
        return
    space = mtn.get_search_space(model)
    assert space.size() > 1
    with torch.no_grad():
        assert _close(model(x), reference), "the max subnet must be the original model"
    profiler = mtn.SubnetProfiler(space, x)

    rng = random.Random(seed)
    for mode in ("min", "random", "random"):
        config = mtn.sample(model, mode, seed=rng)
        with torch.no_grad():
            y = model(x)
        exported = mo.export(copy.deepcopy(model))
        assert not any(is_dynamic(m) for m in exported.modules())
        y_exported, flops, params = _measure(exported, x)
        assert _close(y_exported, y), f"export differs from the supernet at {config}"
        assert abs(profiler.flops() - flops) <= 0.01 * flops, (profiler.flops(), flops, config)
        assert profiler.params() == params, (profiler.params(), params, config)
