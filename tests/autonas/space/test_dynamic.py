"""Dynamic modules: class identity, active attributes, sliced forward, gradients, state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.dynamic import DynamicModule, is_dynamic

from ._models import (
    MLP,
    ConcatNet,
    ConvChain,
    NormNet,
    concat_structure,
    conv_chain_structure,
    masked_reference,
    mlp_structure,
    norm_structure,
    random_config,
)
from ._structures import make_rules

RULES = make_rules(ratios=(0.25, 0.5, 0.75, 1.0), divisor=1, kernel=(1, 3))
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
CONV_CASES = [
    pytest.param(dim, transposed, groups, id=f"{dim}d-{'T' if transposed else 'conv'}-g{groups}")
    for dim in (1, 2, 3)
    for transposed in (False, True)
    for groups in (1, 8, 4)
]


def _input(dim: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 4, *([6] * dim))


def _chain(dim: int, transposed: bool, groups: int) -> tuple[ConvChain, ConvChain, SearchSpace]:
    torch.manual_seed(dim * 10 + groups)
    model = ConvChain(dim, transposed, groups).eval()
    original = copy.deepcopy(model)
    return model, original, SearchSpace.build(model, conv_chain_structure(model), RULES)


@pytest.mark.parametrize(("dim", "transposed", "groups"), CONV_CASES)
def test_conv_subnets_match_masked_reference_and_export(dim, transposed, groups):
    model, original, space = _chain(dim, transposed, groups)
    x = _input(dim)

    @SETTINGS
    @given(data=st.data())
    def check(data):
        space.select(random_config(space, data.draw))
        with torch.no_grad():
            y = model(x)
            expected = masked_reference(original, space)(x)
            exported = space.export(inplace=False)(x)
        assert torch.allclose(y, expected, atol=1e-5), (y - expected).abs().max()
        assert (y - exported).abs().max() <= 1e-5

    check()


@pytest.mark.parametrize(("dim", "transposed", "groups"), [(2, False, 1), (2, False, 8), (1, True, 4)])
def test_conv_active_attributes(dim, transposed, groups):
    model, _, space = _chain(dim, transposed, groups)
    assert type(model.c2).__name__.startswith("Dynamic") and is_dynamic(model.c2)
    assert isinstance(model.c2, (nn.ConvTranspose1d, nn.ConvTranspose2d) if transposed else nn.Conv2d)
    per_group = 8 // groups
    config = {n: hp.max for n, hp in space.named_hparams()}
    config["c1.out_channels"] = 4
    config["c1.kernel_size"] = 1
    space.select(config)
    c1, c2 = model.c1, model.c2
    assert c1.out_channels == 4 and c1.kernel_size == (1,) * dim and c1.padding == (0,) * dim
    assert c2.in_channels == 4
    if groups > 1:
        assert c2.out_channels == 4 and c2.groups == 4 // per_group
    w_out_dim = 1 if transposed else 0
    assert c1.weight.shape[w_out_dim] == 4 and c1.bias.shape == (4,)
    assert c1.weight.shape[2:] == (1,) * dim
    assert model.n1.num_features == 4 and model.n1.running_mean.shape == (4,)
    # the state dict keeps the full tensors
    sd = model.state_dict()
    assert sd["c1.weight"].shape[w_out_dim] == 8 and sd["c1.weight"].shape[2:] == (3,) * dim
    assert sd["n1.running_var"].shape == (8,)


def test_max_subnet_uses_original_tensors():
    model, _, _ = _chain(2, False, 1)
    assert model.c1.weight is model.c1._parameters["weight"]
    assert model.n1.running_mean is model.n1._buffers["running_mean"]


def test_gradients_reach_only_the_active_slice():
    model, _, space = _chain(2, False, 1)
    model.train()
    config = {n: hp.max for n, hp in space.named_hparams()}
    config["c1.out_channels"] = 2
    space.select(config)
    model(_input(2)).square().sum().backward()
    g = model.c1._parameters["weight"].grad
    assert g[:2].abs().sum() > 0 and g[2:].abs().sum() == 0
    g2 = model.c2._parameters["weight"].grad
    assert g2[:, :2].abs().sum() > 0 and g2[:, 2:].abs().sum() == 0
    assert model.n1._parameters["weight"].grad[2:].abs().sum() == 0


def test_training_updates_running_stats_of_active_channels_only():
    model, _, space = _chain(2, False, 1)
    model.train()
    config = {n: hp.max for n, hp in space.named_hparams()}
    config["c1.out_channels"] = 4
    space.select(config)
    before = model.n1._buffers["running_mean"].clone()
    model(_input(2))
    after = model.n1._buffers["running_mean"]
    assert not torch.equal(after[:4], before[:4]) and torch.equal(after[4:], before[4:])


def test_concat_bn_running_stats_written_back_through_gather():
    torch.manual_seed(0)
    model = ConcatNet().train()
    space = SearchSpace.build(model, concat_structure(), RULES)
    space.select({"a.out_channels": 4, "b.out_channels": 6}, strict=False)
    mean = model.bn._buffers["running_mean"]
    before = mean.clone()
    model(torch.randn(2, 3, 6, 6))
    changed = ~torch.isclose(mean, before)
    assert changed[:4].all() and changed[8:14].all()
    assert not changed[4:8].any() and not changed[14:].any()


@SETTINGS
@given(data=st.data())
def test_concat_and_flatten_subnets(data):
    torch.manual_seed(1)
    model = ConcatNet().eval()
    original = copy.deepcopy(model)
    space = SearchSpace.build(model, concat_structure(), RULES)
    space.select(random_config(space, data.draw))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(y, masked_reference(original, space)(x), atol=1e-5)
        assert (y - space.export(inplace=False)(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_group_and_instance_norm(norm):
    torch.manual_seed(2)
    model = NormNet(norm).eval()
    original = copy.deepcopy(model)
    space = SearchSpace.build(model, norm_structure(), RULES)
    hp = space.get_hparam("c1.out_channels")
    if norm == "group":
        assert hp.choices == (4, 8, 12, 16) and not hp.sortable  # group size 4 is kept
    x = torch.randn(2, 3, 5, 5)
    for width in hp.choices:
        hp.active = width
        if norm == "group":
            assert (model.norm.num_channels, model.norm.num_groups) == (width, width // 4)
        with torch.no_grad():
            y = model(x)
            assert torch.allclose(y, masked_reference(original, space)(x), atol=1e-5)
            assert (y - space.export(inplace=False)(x)).abs().max() <= 1e-5


@SETTINGS
@given(data=st.data())
def test_linear_and_layernorm(data):
    torch.manual_seed(3)
    model = MLP().eval()
    original = copy.deepcopy(model)
    space = SearchSpace.build(model, mlp_structure(), RULES)
    cfg = random_config(space, data.draw)
    space.select(cfg)
    k1, k2 = cfg["fc1.out_features"], cfg["fc2.out_features"]
    assert model.ln.normalized_shape == (k1,) and model.fc2.in_features == k1 and model.fc2.out_features == k2
    x = torch.randn(2, 3, 8)
    # LayerNorm normalises over the active features only: compute that by hand
    f = torch.nn.functional
    with torch.no_grad():
        h = f.linear(x, original.fc1.weight[:k1], original.fc1.bias[:k1])
        h = f.gelu(f.layer_norm(h, (k1,), original.ln.weight[:k1], original.ln.bias[:k1]))
        h = f.gelu(f.linear(h, original.fc2.weight[:k2, :k1], original.fc2.bias[:k2]))
        expected = f.linear(h, original.fc3.weight[:, :k2], original.fc3.bias)
        y = model(x)
        assert torch.allclose(y, expected, atol=1e-5)
        assert (y - space.export(inplace=False)(x)).abs().max() <= 1e-5


def test_state_dict_round_trip_between_converted_models():
    model, _, space = _chain(2, False, 1)
    space.sample("min")
    other = ConvChain(2, False, 1).eval()
    SearchSpace.build(other, conv_chain_structure(other), RULES).sample("min")
    other.load_state_dict(model.state_dict())
    x = _input(2)
    assert torch.equal(model(x), other(x))


def test_to_dtype_refreshes_gather_indices():
    torch.manual_seed(0)
    model = ConcatNet().eval()
    space = SearchSpace.build(model, concat_structure(), RULES)
    space.select({"a.out_channels": 2, "b.out_channels": 3}, strict=False)
    x = torch.randn(1, 3, 4, 4)
    y = model(x)
    model.double()
    assert model.bn.running_mean.dtype == torch.float64
    assert torch.allclose(model(x.double()).float(), y, atol=1e-5)


def test_subclass_without_forward_stays_its_class():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 8, 3), nn.Conv2d(8, 2, 1))
    from ._structures import StructureBuilder

    b = StructureBuilder()
    g = b.group(8)
    b.chain("0", b.frozen(3), g)
    b.chain("1", g, b.frozen(2))
    SearchSpace.build(model, b.build(), RULES)
    assert isinstance(model[0], MyConv) and isinstance(model[0], DynamicModule)
    assert type(model[0]).__name__ == "DynamicMyConv"
