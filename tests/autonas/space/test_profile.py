"""Analytic FLOPs/params of subnets agree with FlopCounterMode and numel on the exported model."""

from __future__ import annotations

import random
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.errors import SubnetConfigError
from modeopt_autonas.space.profile import SubnetProfiler

from ._models import (
    MLP,
    ConcatNet,
    ConvChain,
    DepthNet,
    concat_structure,
    conv_chain_structure,
    depth_structure,
    mlp_structure,
)
from ._structures import make_rules

RULES = make_rules(ratios=(0.25, 0.5, 0.75, 1.0), kernel=(1, 3), min_depth=0)


def measured(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


CASES = {
    "conv2d": (lambda: ConvChain(2, False, 1), conv_chain_structure, (2, 4, 6, 6)),
    "depthwise1d": (lambda: ConvChain(1, False, 8), conv_chain_structure, (2, 4, 7)),
    "grouped3d_T": (lambda: ConvChain(3, True, 4), conv_chain_structure, (1, 4, 3, 3, 3)),
    "concat": (ConcatNet, lambda m: concat_structure(), (2, 3, 6, 6)),
    "mlp": (MLP, lambda m: mlp_structure(), (2, 5, 8)),
    "depth": (DepthNet, depth_structure, (2, 3, 6, 6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flops_and_params_match_exported_model(case):
    make, structure, shape = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    space = SearchSpace.build(model, structure(model), RULES)
    x = torch.randn(*shape)
    profiler = SubnetProfiler(space, x)
    assert (profiler.flops(), profiler.params()) == measured(model, x)
    rng = random.Random(0)
    for _ in range(6):
        space.sample("random", rng)
        flops, params = measured(space.export(inplace=False), x)
        assert abs(profiler.flops() - flops) <= 0.01 * flops
        assert profiler.params() == params


def test_query_with_config_does_not_select():
    torch.manual_seed(0)
    model = DepthNet().eval()
    space = SearchSpace.build(model, depth_structure(model), RULES)
    x = torch.randn(1, 3, 6, 6)
    profiler = SubnetProfiler(space, x)
    cfg = space.sample("random", random.Random(2))
    expected = (profiler.flops(), profiler.params())
    space.sample("max")
    assert (profiler.flops(cfg), profiler.params(cfg)) == expected
    assert space.config() == {n: hp.max for n, hp in space.named_hparams()}
    with pytest.raises(SubnetConfigError):
        profiler.flops({"nope": 1})
    with pytest.raises(SubnetConfigError):
        profiler.flops({"blocks.depth": 9})


def test_profiling_restores_subnet_mode_and_stats():
    torch.manual_seed(0)
    model = DepthNet().train()
    space = SearchSpace.build(model, depth_structure(model), RULES)
    cfg = space.sample("random", random.Random(5))
    stats = model.bn._buffers["running_mean"].clone()
    SubnetProfiler(space, torch.randn(2, 3, 6, 6))
    assert space.config() == cfg and model.training and model.blocks[0].bn1.training
    assert torch.equal(stats, model.bn._buffers["running_mean"])


def test_queries_are_fast():
    torch.manual_seed(0)
    model = DepthNet(blocks=6).eval()
    space = SearchSpace.build(model, depth_structure(model, (1, 2, 3, 4, 5)), RULES)
    profiler = SubnetProfiler(space, torch.randn(1, 3, 6, 6))
    configs = [space.sample("random", random.Random(i)) for i in range(200)]
    start = time.perf_counter()
    for cfg in configs:
        profiler.flops(cfg)
        profiler.params(cfg)
    per_query = (time.perf_counter() - start) / (2 * len(configs))
    assert per_query < 2e-3, f"{per_query * 1e6:.0f} us per query"
