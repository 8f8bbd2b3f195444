"""Elastic depth: choices from skippable trailing blocks and min_depth; forward runs the first d."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeopt_autonas.space import SearchSpace

from ._models import DepthNet, depth_structure, masked_reference, random_config
from ._structures import StructureBuilder, make_rules


@pytest.mark.parametrize(
    ("skippable", "min_depth", "choices"),
    [((1, 2, 3), 0, (1, 2, 3, 4)), ((0, 1, 2, 3), 0, (0, 1, 2, 3, 4)), ((1, 3), 0, (3, 4)), ((1, 2, 3), 2, (2, 3, 4))],
)
def test_depth_choices(skippable, min_depth, choices):
    model = DepthNet()
    space = SearchSpace.build(model, depth_structure(model, skippable), make_rules(min_depth=min_depth))
    assert space.get_hparam("blocks.depth").choices == choices


def test_depth_frozen_by_rules():
    model = DepthNet()
    space = SearchSpace.build(model, depth_structure(model), make_rules(frozen=("blocks",)))
    assert "blocks.depth" in space.frozen and "blocks.depth" not in space.config()


def test_dropped_blocks_do_not_run_but_stay_in_state_dict():
    torch.manual_seed(0)
    model = DepthNet().eval()
    space = SearchSpace.build(model, depth_structure(model), make_rules())
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *a, i=i: calls.append(i))
    space.select({**space.config(), "blocks.depth": 2})
    model(torch.randn(1, 3, 4, 4))
    assert calls == [0, 1] and model.blocks.depth == 2
    assert "blocks.3.conv1.weight" in model.state_dict() and len(model.blocks) == 4


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_depth_and_width_subnets(data):
    torch.manual_seed(4)
    model = DepthNet().eval()
    original = copy.deepcopy(model)
    space = SearchSpace.build(model, depth_structure(model), make_rules(ratios=(0.25, 0.5, 1.0)))
    space.select(random_config(space, data.draw))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(y, masked_reference(original, space)(x), atol=1e-5)
        assert (y - space.export(inplace=False)(x)).abs().max() <= 1e-5


def test_root_sequential_depth_is_named_depth():
    torch.manual_seed(0)
    model = DepthNet().blocks.eval()  # the model *is* the sequential
    b = StructureBuilder()
    s = b.frozen(8, "model input/output")
    for i in range(4):
        h = b.group(12)
        b.chain(f"{i}.conv1", s, h)
        b.bind(f"{i}.bn1", "features", h)
        b.chain(f"{i}.conv2", h, s)
        b.bind(f"{i}.bn2", "features", s)
    b.depth_spec("", (1, 2, 3))
    space = SearchSpace.build(model, b.build(), make_rules(ratios=(0.5, 1.0)))
    assert "depth" in space.config() and "0.conv1.out_channels" in space.config()
    space.select({**space.config(), "depth": 1})
    x = torch.randn(1, 8, 4, 4)
    y = model(x)
    exported = space.export()
    assert len(exported) == 1 and torch.allclose(exported(x), y, atol=1e-6)
