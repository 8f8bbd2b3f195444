"""A third-party layer type made searchable with one LayerType record (spec + dynamic class + rules)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from modeopt_autonas.space import LAYERS, DynamicAttributeError, SearchSpace, SubnetProfiler
from tests.autonas._custom_layer import SCALED_LINEAR, ScaledLinear

from ._structures import StructureBuilder, make_rules
from .test_profile import measured


@pytest.fixture
def registered() -> Iterator[None]:
    LAYERS.register(SCALED_LINEAR)
    yield
    LAYERS.unregister(ScaledLinear)


def test_custom_layer_end_to_end(registered):
    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(6, 16), nn.ReLU(), ScaledLinear(16, 3))
    b = StructureBuilder()
    g = b.group(16)
    b.chain("0", b.frozen(6), g)
    b.chain("2", g, b.frozen(3))
    x = torch.randn(4, 6)
    before = model(x)
    space = SearchSpace.build(model, b.build(), make_rules(ratios=(0.25, 0.5, 1.0)))
    profiler = SubnetProfiler(space, x)
    space.sort_by_importance()
    assert (model(x) - before).abs().max() <= 1e-5
    space.select({"0.out_features": 8})
    assert model[0].scale.shape == (8,) and model[2].in_features == 8
    with pytest.raises(DynamicAttributeError, match="SearchSpace.select"):
        model[0].out_features = 4
    y = model(x)
    exported = space.export(inplace=False)
    assert type(exported[0]) is ScaledLinear and exported[0].weight.shape == (8, 6)
    assert (exported(x) - y).abs().max() <= 1e-6
    assert (profiler.flops(), profiler.params()) == measured(exported, x)


def test_without_registration_groups_are_frozen():
    model = nn.Sequential(ScaledLinear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    b = StructureBuilder()
    g = b.group(16)
    b.chain("0", b.frozen(6), g)
    b.chain("2", g, b.frozen(3))
    space = SearchSpace.build(model, b.build(), make_rules())
    assert space.config() == {}
    assert "has no dynamic class" in space.frozen["0.out"]
