"""Importance sorting: function preserved, most important channels first, idempotent."""

from __future__ import annotations

import copy

import pytest
import torch

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.errors import SubnetConfigError

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
from ._structures import make_rules

RULES = make_rules(ratios=(0.25, 0.5, 0.75, 1.0))


def _perturb_norms(model: torch.nn.Module) -> None:
    """Give norm layers non-trivial affine params and stats so a wrong permutation shows."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.ndim == 1 and isinstance(m, torch.nn.modules.batchnorm._NormBase):
                with torch.no_grad():
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)


CASES = {
    "chain": (lambda: ConvChain(2, False, 1), lambda m: conv_chain_structure(m), (2, 4, 6, 6)),
    "depthwise": (lambda: ConvChain(2, False, 8), lambda m: conv_chain_structure(m), (2, 4, 6, 6)),
    "transposed": (lambda: ConvChain(1, True, 1), lambda m: conv_chain_structure(m), (2, 4, 6)),
    "concat_flatten": (ConcatNet, lambda m: concat_structure(), (2, 3, 6, 6)),
    "residual": (DepthNet, depth_structure, (2, 3, 6, 6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sort_preserves_function_and_is_idempotent(case):
    make, structure, shape = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    _perturb_norms(model)
    x = torch.randn(*shape)
    with torch.no_grad():
        before = model(x)
    space = SearchSpace.build(model, structure(model), RULES)
    result = space.sort_by_importance()
    assert result, "nothing was sorted"
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= 1e-5
    for importance in result.values():
        assert torch.all(importance[:-1] >= importance[1:])
    state = copy.deepcopy(model.state_dict())
    space.sort_by_importance()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_sorted_channels_are_the_most_important_first():
    torch.manual_seed(1)
    model = ConvChain(2, False, 1).eval()
    space = SearchSpace.build(model, conv_chain_structure(model), RULES)
    norms_before = model.c1._parameters["weight"].detach().abs().sum((1, 2, 3))
    space.sort_by_importance()
    norms_after = model.c1._parameters["weight"].detach().abs().sum((1, 2, 3))
    assert torch.equal(norms_after, norms_before.sort(descending=True).values)
    # the first k channels of the subnet are the k largest-L1 channels of the original
    space.select({**space.config(), "c1.out_channels": 2})
    assert torch.equal(model.c1.weight.abs().sum((1, 2, 3)), norms_before.sort(descending=True).values[:2])


def test_unsortable_groups_keep_their_order():
    torch.manual_seed(2)
    model = NormNet("group").eval()
    space = SearchSpace.build(model, norm_structure(), RULES)
    w = model.c1._parameters["weight"].clone()
    assert space.sort_by_importance() == {}
    assert torch.equal(w, model.c1._parameters["weight"])


def test_sort_selected_names_only():
    torch.manual_seed(3)
    model = ConvChain(2, False, 1).eval()
    space = SearchSpace.build(model, conv_chain_structure(model), RULES)
    w2 = model.c2._parameters["weight"].clone()
    assert list(space.sort_by_importance(["c1.out_channels"])) == ["c1.out_channels"]
    # c2's out dim is untouched (its in dim follows c1's permutation)
    assert torch.allclose(w2.abs().sum((1, 2, 3)), model.c2._parameters["weight"].abs().sum((1, 2, 3)))
    with pytest.raises(SubnetConfigError, match="unknown"):
        space.sort_by_importance(["nope"])


def _dead_channel_cnn() -> tuple[torch.nn.Module, torch.Tensor]:
    """TinyCNN whose conv1 channels 0 and 1 have the largest weights but are never active (BN shift, ReLU)."""
    from tests.fastnas._models import TinyCNN

    torch.manual_seed(4)
    model = TinyCNN().eval()
    with torch.no_grad():
        model.conv1.weight[:2] *= 10
        model.bn1.bias[:2] = -1e4
    return model, torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(6))


def test_activation_importance_ranks_a_dead_channel_last() -> None:
    import modeopt_core as mo
    from modeopt_autonas.space import get_search_space

    model, x = _dead_channel_cnn()
    with torch.no_grad():
        before = model(x)
    weights = get_search_space(mo.apply_mode(copy.deepcopy(model), ["fastnas"]))
    assert set(torch.topk(weights.model.conv1.weight.detach().abs().sum((1, 2, 3)), 2).indices.tolist()) == {0, 1}
    space = get_search_space(mo.apply_mode(model, ["fastnas"]))
    scores = space.activation_importance(lambda m: m(x), ["conv1.out_channels"])
    assert set(scores) == {"conv1.out_channels"} and scores["conv1.out_channels"].shape == (16,)
    assert torch.equal(scores["conv1.out_channels"][:2], torch.zeros(2, dtype=torch.float64))
    assert torch.all(scores["conv1.out_channels"][2:] > 0)
    sorted_by = space.sort_by_importance(["conv1.out_channels"], scores=scores)
    assert torch.all(sorted_by["conv1.out_channels"][:-1] >= sorted_by["conv1.out_channels"][1:])
    with torch.no_grad():
        assert torch.allclose(space.model(x), before, atol=1e-5)  # the sort preserves the function
        # the narrowest-but-two width drops exactly the dead ones: the output does not change
        space.select({**space.config(), "conv1.out_channels": 14})
        assert torch.allclose(space.model(x), before, atol=1e-5)
    # the weight-norm sort keeps the dead channel and drops a live one instead
    weights.sort_by_importance(["conv1.out_channels"])
    weights.select({**weights.config(), "conv1.out_channels": 14})
    with torch.no_grad():
        assert not torch.allclose(weights.model(x), before, atol=1e-3)


def test_given_scores_must_have_one_value_per_channel() -> None:
    import modeopt_core as mo
    from modeopt_autonas.space import get_search_space

    model, _ = _dead_channel_cnn()
    space = get_search_space(mo.apply_mode(model, ["fastnas"]))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(SubnetConfigError, match=r"importance of 'conv1.out_channels' has shape \(3,\); expected \(16,\)"):
        space.sort_by_importance(["conv1.out_channels"], scores={"conv1.out_channels": torch.ones(3)})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _unit(t: torch.Tensor) -> torch.Tensor:
    t = t.to(torch.float64)
    return t / (t.max() + 1e-12)


def test_contribution_behind_a_batchnorm_is_its_scale_times_the_readers() -> None:
    import modeopt_core as mo
    from modeopt_autonas.space import get_search_space
    from tests.fastnas._models import TinyCNN

    torch.manual_seed(7)
    model = TinyCNN().eval()
    with torch.no_grad():
        model.conv1.weight[:2] *= 10  # the largest producers ...
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.weight[:2] = 1e-3  # ... leave the batch norm at almost nothing
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        before = model(x)
    space = get_search_space(mo.apply_mode(model, ["fastnas"]))
    scores = space.contribution_importance()
    expected = _unit(model.bn1.weight.detach().abs()) * _unit(model.conv2.weight.detach().abs().sum((0, 2, 3), dtype=torch.float64))
    assert torch.allclose(scores["conv1.out_channels"], expected, rtol=1e-9)
    assert set(torch.topk(-scores["conv1.out_channels"], 2).indices.tolist()) == {0, 1}  # ranked last
    # the last conv's group: read by the linear head
    expected3 = _unit(model.bn3.weight.detach().abs()) * _unit(model.fc.weight.detach().abs().sum(0, dtype=torch.float64))
    assert torch.allclose(scores["conv3.out_channels"], expected3, rtol=1e-9)
    space.sort_by_importance(scores=scores)
    with torch.no_grad():
        assert torch.allclose(space.model(x), before, atol=1e-5)  # the sort preserves the function


def test_contribution_without_a_per_channel_norm_multiplies_producers_scalings_and_readers() -> None:
    from ._models import MLP, mlp_structure

    torch.manual_seed(9)
    model = MLP().eval()
    with torch.no_grad():
        model.ln.weight.uniform_(0.1, 2.0)
    space = SearchSpace.build(model, mlp_structure(), RULES)
    scores = space.contribution_importance()
    fc1, ln, fc2, fc3 = (model.fc1.weight.detach().abs().double(), model.ln.weight.detach().abs().double(),
                         model.fc2.weight.detach().abs().double(), model.fc3.weight.detach().abs().double())
    # LayerNorm divides by one statistic of all features: the producers' relative scale stays
    assert torch.allclose(scores["fc1.out_features"], _unit(fc1.sum(1)) * _unit(ln) * _unit(fc2.sum(0)), rtol=1e-9)
    assert torch.allclose(scores["fc2.out_features"], _unit(fc2.sum(1)) * _unit(fc3.sum(0)), rtol=1e-9)
    assert list(space.contribution_importance(["fc2.out_features"])) == ["fc2.out_features"]


def test_contribution_behind_a_batchnorm_without_affine_is_the_readers_alone() -> None:
    import modeopt_core as mo
    from modeopt_autonas.space import get_search_space
    from tests.fastnas._models import TinyCNN

    torch.manual_seed(10)
    model = TinyCNN().eval()
    model.bn1 = torch.nn.BatchNorm2d(16, affine=False).eval()
    space = get_search_space(mo.apply_mode(model, ["fastnas"]))
    scores = space.contribution_importance(["conv1.out_channels"])
    expected = _unit(model.conv2.weight.detach().abs().sum((0, 2, 3), dtype=torch.float64))
    assert torch.allclose(scores["conv1.out_channels"], expected, rtol=1e-9)
