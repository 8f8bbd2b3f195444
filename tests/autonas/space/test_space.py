"""SearchSpace.build / restore / select / sample / config / table, and structure validation."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.dynamic import DynamicModule
from modeopt_autonas.space.errors import SearchSpaceError, StructureMismatchError, SubnetConfigError
from modeopt_autonas.space.structure import Binding, DepthSpec, Segment, SpaceStructure
from modeopt_core.errors import ConfigError, ConvertError

from ._models import (
    ConcatNet,
    ConvChain,
    DepthNet,
    NormNet,
    concat_structure,
    conv_chain_structure,
    depth_structure,
    norm_structure,
)
from ._structures import StructureBuilder, make_rules


def _chain(groups: int = 1, **rules) -> tuple[ConvChain, SearchSpace]:
    torch.manual_seed(0)
    model = ConvChain(2, False, groups).eval()
    return model, SearchSpace.build(model, conv_chain_structure(model), make_rules(**rules))


def test_one_shared_hparam_per_group_named_after_first_producer():
    model, space = _chain(ratios=(0.5, 1.0), kernel=(1, 3))
    # c3 is 1x1: no smaller kernel, so no kernel hparam
    assert list(space.config()) == ["c1.out_channels", "c1.kernel_size", "c2.out_channels", "c2.kernel_size"]
    hp = space.get_hparam("c1.out_channels")
    hp.active = 4
    assert model.c1.out_channels == model.n1.num_features == model.c2.in_channels == 4
    assert space.size() == 2**4
    assert set(space.frozen) == {"c1.in_channels", "c3.out_channels"}


def test_depthwise_group_shared_by_in_and_out():
    model, space = _chain(groups=8, ratios=(0.5, 1.0))
    assert list(space.config()) == ["c1.out_channels"]
    space.select({"c1.out_channels": 4})
    assert (model.c2.in_channels, model.c2.out_channels, model.c2.groups) == (4, 4, 4)
    assert model.n2.num_features == model.c3.in_channels == 4


def test_choices_from_ratios_divisor_and_intersection():
    model = ConvChain(2, False, 1)

    def rules(name, module):
        if name == "n1":  # a member with coarser ratios restricts the whole group
            return {"features_ratio": [0.5, 1.0], "feature_divisor": 1}
        if isinstance(module, nn.Conv2d):
            return {"channels_ratio": [0.25, 0.5, 0.75, 1.0], "channel_divisor": 2}
        return {"features_ratio": [0.25, 0.5, 0.75, 1.0], "feature_divisor": 1}

    space = SearchSpace.build(model, conv_chain_structure(model), rules)
    assert space.get_hparam("c1.out_channels").choices == (4, 8)
    assert space.get_hparam("c2.out_channels").choices == (2, 4, 6, 8)


def test_divisor_larger_than_width_leaves_group_frozen():
    _, space = _chain(divisor=16)
    assert space.size() == 1 and space.config() == {}
    assert "single width" in space.frozen["c1.out_channels"]


def test_rule_none_freezes_every_group_of_the_module():
    model, space = _chain(frozen=("n1",))
    assert "c1.out_channels" not in space.config()
    assert "n1 is frozen by the rules" in space.frozen["c1.out_channels"]
    assert not isinstance(model.c1, DynamicModule)  # nothing searchable left on c1
    assert isinstance(model.c2, DynamicModule)


def test_multiple_of_and_unsortable_from_layer_spec():
    torch.manual_seed(0)
    model = ConvChain(2, False, 4)  # c2: 8 channels in 4 groups of 2
    space = SearchSpace.build(model, conv_chain_structure(model), make_rules(ratios=(0.25, 0.375, 0.5, 1.0)))
    hp = space.get_hparam("c1.out_channels")
    assert hp.choices == (2, 4, 8) and not hp.sortable  # 3 is dropped: not a multiple of 2


def test_select_strict_errors_leave_subnet_unchanged():
    model, space = _chain(ratios=(0.5, 1.0))
    before = space.config()
    bad_configs = [
        {**before, "nope": 3},  # unknown name
        {"c1.out_channels": 4},  # missing names
        {**before, "c1.out_channels": 4, "c2.out_channels": 5},  # invalid value
        {**before, "c1.out_channels": 4, "c1.in_channels": 2},  # wrong fixed value
    ]
    for cfg in bad_configs:
        with pytest.raises(SubnetConfigError) as info:
            space.select(cfg)
        assert isinstance(info.value, ConfigError)
        assert space.config() == before and model.c1.out_channels == 8
    with pytest.raises(SubnetConfigError, match=r"unknown names \['nope'\]"):
        space.select({**before, "nope": 3})
    with pytest.raises(SubnetConfigError, match=r"missing configurable names \[.*'c2.out_channels'"):
        space.select({"c1.out_channels": 4})


def test_select_non_strict_and_fixed_names():
    model, space = _chain(ratios=(0.5, 1.0))
    space.select({"c1.out_channels": 4, "whatever": 1}, strict=False)
    assert model.c1.out_channels == 4
    with pytest.raises(SubnetConfigError):
        space.select({"c1.out_channels": 3}, strict=False)
    space.select({**space.config(), "c1.in_channels": 4})  # fixed names at their value are fine


def test_sample_modes():
    _, space = _chain(ratios=(0.25, 0.5, 1.0), kernel=(1, 3))
    assert set(space.sample("min").values()) == {1, 2}
    assert space.sample("max") == space.sample("original")
    a = space.sample("random", random.Random(3))
    b = space.sample("random", random.Random(3))
    assert a == b == space.config()
    seen = {tuple(space.sample("random", random.Random(i)).values()) for i in range(20)}
    assert len(seen) > 5
    with pytest.raises(SubnetConfigError, match="sample mode"):
        space.sample("median")


def test_table_lists_hparams():
    _, space = _chain(ratios=(0.5, 1.0))
    table = space.table(include_frozen=True)
    assert "c1.out_channels" in table and "[4, 8]" in table and "2 configurable hparams, 4 subnets" in table
    assert "frozen c1.in_channels" in table


def test_build_is_deterministic_and_restore_reproduces_the_space():
    torch.manual_seed(0)
    a, b = DepthNet(), DepthNet()
    b.load_state_dict(a.state_dict())
    structure = depth_structure(a)
    rules = make_rules(ratios=(0.5, 0.75, 1.0), min_depth=1)
    space_a = SearchSpace.build(a, structure, rules)
    cfg = space_a.sample("random", random.Random(1))
    restored = SpaceStructure.from_json(copy.deepcopy(structure.to_json()))
    space_b = SearchSpace.restore(b, restored, rules, config=cfg)
    assert [(n, hp.choices) for n, hp in space_a.named_hparams(None)] == [
        (n, hp.choices) for n, hp in space_b.named_hparams(None)
    ]
    x = torch.randn(2, 3, 6, 6)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def _expect_mismatch(model, structure, match):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(StructureMismatchError, match=match) as info:
        SearchSpace.build(model, structure, make_rules())
    assert isinstance(info.value, ConvertError)
    assert not any(isinstance(m, DynamicModule) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_structure_validation_leaves_model_unchanged():
    model = ConvChain(2, False, 1)
    good = conv_chain_structure(model)

    def edit(**changes):
        s = copy.deepcopy(good)
        for k, v in changes.items():
            setattr(s, k, v)
        return s

    _expect_mismatch(model, edit(bindings=[*good.bindings, Binding("ghost", "in", (Segment(1),))]), "ghost")
    _expect_mismatch(model, edit(bindings=[*good.bindings, Binding("n2", "in", (Segment(1),))]), "no 'in'")
    _expect_mismatch(model, edit(bindings=[*good.bindings[:-1], Binding("c3", "out", (Segment(2),))]), "spans 8")
    _expect_mismatch(model, edit(bindings=[*good.bindings, Binding("c3", "out", (Segment(9),))]), "two bindings")
    _expect_mismatch(model, edit(bindings=[Binding("c1", "out", (Segment(42),))]), "unknown channel group 42")
    _expect_mismatch(model, edit(depth=[DepthSpec("c1", (0,))]), "not an nn.Sequential")


def test_grouped_conv_needs_same_in_and_out_groups():
    model = ConvChain(2, False, 8)
    b = StructureBuilder()
    g1, g2 = b.group(8), b.group(8)
    b.chain("c1", b.frozen(4), g1)
    b.chain("c2", g1, g2)
    _expect_mismatch(model, b.build(), "same channel groups")


def test_already_converted_model_is_rejected():
    model, _ = _chain()
    with pytest.raises(SearchSpaceError, match="already converted"):
        SearchSpace.build(model, conv_chain_structure(model), make_rules())


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ({"channels_ratio": [0.0, 1.0]}, "ratios in"),
        ({"channels_ratio": "x"}, "list of numbers"),
        ({"channels_ratio": [1.0], "channel_divisor": -2}, "non-negative int"),
    ],
)
def test_bad_rules_raise_config_error(rule, match):
    model = NormNet("group")
    with pytest.raises(ConfigError, match=match):
        SearchSpace.build(model, norm_structure(), lambda name, m: rule)
    assert not any(isinstance(m, DynamicModule) for m in model.modules())


def test_rules_must_return_dict_or_none():
    model = NormNet("group")
    with pytest.raises(ConfigError, match="dict or None"):
        SearchSpace.build(model, norm_structure(), lambda name, m: [1])


def test_concat_segments_keep_separate_hparams():
    model = ConcatNet()
    space = SearchSpace.build(model, concat_structure(), make_rules(ratios=(0.5, 1.0)))
    assert {"a.out_channels", "b.out_channels"} <= set(space.config())
    space.select({"a.out_channels": 4, "b.out_channels": 6}, strict=False)
    assert model.bn.num_features == model.c.in_channels == 10 and model.fc.in_features == 40
