"""Whole torchvision models with hand-built structures: subnets, sorting, export, FLOPs/params."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torchvision

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.profile import SubnetProfiler

from ._models import masked_reference
from ._structures import make_rules, resnet_structure, squeezenet_structure
from .test_profile import measured

MODELS = {
    "resnet18": (torchvision.models.resnet18, resnet_structure),
    "squeezenet1_1": (torchvision.models.squeezenet1_1, squeezenet_structure),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_random_subnets_end_to_end(name):
    ctor, structure = MODELS[name]
    torch.manual_seed(0)
    model = ctor(num_classes=10).eval()
    original = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    space = SearchSpace.build(
        model, structure(model), make_rules(ratios=(0.25, 0.5, 0.75, 1.0), divisor=8, min_depth=1)
    )
    assert space.size() > 1000
    with torch.no_grad():
        reference_out = model(x)
    profiler = SubnetProfiler(space, x)
    rng = random.Random(1)
    for _ in range(3):
        space.sample("random", rng)
        with torch.no_grad():
            y = model(x)
            scale = y.abs().max()
            assert (y - masked_reference(original, space)(x)).abs().max() <= 1e-5 * max(1.0, scale)
            exported = space.export(inplace=False)
            assert (y - exported(x)).abs().max() <= 1e-5 * max(1.0, scale)
        flops, params = measured(exported, x)
        assert abs(profiler.flops() - flops) <= 0.01 * flops and profiler.params() == params
    space.sample("max")
    space.sort_by_importance()
    with torch.no_grad():
        assert (model(x) - reference_out).abs().max() <= 1e-5 * max(1.0, reference_out.abs().max())
