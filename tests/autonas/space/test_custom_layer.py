"""A third-party layer type made searchable with a LayerSpec + dynamic class pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from modeopt_autonas.dynamic import DynamicModule, attr_view, param_view
from modeopt_autonas.errors import DynamicAttributeError
from modeopt_autonas.layers import LAYERS, LayerSpec
from modeopt_autonas.profile import SubnetProfiler
from modeopt_autonas.space import SearchSpace

from ._structures import StructureBuilder, make_rules
from .test_profile import measured


class ScaledLinear(nn.Module):
    """A linear layer without bias and with a learnt per-output scale."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)
        self.scale = nn.Parameter(torch.rand(out_features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight) * self.scale


class DynamicScaledLinear(DynamicModule, ScaledLinear):
    _dyn_role_attrs = {"out": "out_features", "in": "in_features"}
    _dyn_rule_keys = ("features_ratio", "feature_divisor")
    weight = param_view("weight")
    scale = param_view("scale")
    out_features = attr_view("out_features")
    in_features = attr_view("in_features")

    @staticmethod
    def full_width(module: nn.Module, role: str) -> int:
        return module.out_features if role == "out" else module.in_features

    def _dyn_layout(self):
        return {"out": (("weight", 0), ("scale", 0)), "in": (("weight", 1),)}

    def channel_weight(self, role):
        return ("weight", 0 if role == "out" else 1)

    def _dyn_attrs(self):
        d = self.__dict__
        dims = d["_dyn_dims"]
        return {
            "out_features": dims["out"].width() if "out" in dims else d["out_features"],
            "in_features": dims["in"].width() if "in" in dims else d["in_features"],
        }


@pytest.fixture
def registered() -> Iterator[None]:
    LAYERS.register_spec(ScaledLinear, lambda m: LayerSpec("producer", -1, -1))
    LAYERS.register_dynamic(ScaledLinear, DynamicScaledLinear)
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
