"""Export: plain modules of the original classes, smaller weights, same outputs, torch.export-able."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.dynamic import DynamicModule
from modeopt_autonas.space.errors import SpaceExportedError

from ._models import ConcatNet, ConvChain, DepthNet, concat_structure, conv_chain_structure, depth_structure
from ._structures import make_rules

RULES = make_rules(ratios=(0.25, 0.5, 0.75, 1.0), kernel=(1, 3), min_depth=1)


def _no_dynamic_left(model: nn.Module) -> bool:
    return not any(isinstance(m, DynamicModule) or "_dyn_" in "".join(vars(m)) for m in model.modules())


@pytest.mark.parametrize(
    ("make", "structure", "shape"),
    [
        (lambda: ConvChain(2, False, 8), conv_chain_structure, (2, 4, 6, 6)),
        (lambda: ConvChain(3, True, 1), conv_chain_structure, (1, 4, 4, 4, 4)),
        (ConcatNet, lambda m: concat_structure(), (2, 3, 6, 6)),
        (DepthNet, depth_structure, (2, 3, 6, 6)),
    ],
)
def test_export_in_place(make, structure, shape):
    torch.manual_seed(0)
    model = make().eval()
    space = SearchSpace.build(model, structure(model), RULES)
    space.sort_by_importance()
    space.sample("random", random.Random(7))
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
    exported = space.export()
    assert exported is model and _no_dynamic_left(model)
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-5
    program = torch.export.export(model, (x,))
    assert (program.module()(x) - expected).abs().max() <= 1e-5
    with pytest.raises(SpaceExportedError):
        space.select(space.config())


def test_export_shapes_and_plain_attributes():
    torch.manual_seed(0)
    model = ConvChain(2, False, 1).eval()
    space = SearchSpace.build(model, conv_chain_structure(model), RULES)
    space.select({"c1.out_channels": 2, "c1.kernel_size": 1, "c2.out_channels": 6, "c2.kernel_size": 3})
    space.export()
    c1, c2 = model.c1, model.c2
    assert type(c1) is nn.Conv2d and type(model.n1) is nn.BatchNorm2d
    assert c1.weight.shape == (2, 4, 1, 1) and c1.padding == (0, 0) and c1.kernel_size == (1, 1)
    assert type(c1.out_channels) is int and c1.out_channels == 2
    assert isinstance(c1.weight, nn.Parameter) and c1.weight.is_contiguous()
    assert c2.weight.shape == (6, 2, 3, 3) and model.n1.running_mean.shape == (2,)
    assert model.c3.weight.shape == (6, 6, 1, 1)
    fresh = ConvChain(2, False, 1)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(model.state_dict())  # the exported architecture is smaller


def test_export_copy_keeps_supernet_and_depth_drops_children():
    torch.manual_seed(0)
    model = DepthNet().eval()
    space = SearchSpace.build(model, depth_structure(model), RULES)
    space.select({**space.config(), "blocks.depth": 2})
    exported = space.export(inplace=False)
    assert len(exported.blocks) == 2 and type(exported.blocks) is nn.Sequential
    assert len(model.blocks) == 4 and isinstance(model.blocks, DynamicModule)
    assert _no_dynamic_left(exported)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        assert (exported(x) - model(x)).abs().max() <= 1e-5
    space.sample("max")  # the supernet is still usable
    assert model.blocks.depth == 4
