"""ChannelAdapter: a deterministic linear map of channels, narrower inputs use its leading columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeopt_distill import ChannelAdapter, ShapeMismatchError


def test_projects_along_dim_like_a_1x1_convolution() -> None:
    adapter = ChannelAdapter(3, 5, dim=1, seed=4)
    x = torch.randn(2, 3, 4, 4)
    expected = F.conv2d(x, adapter.weight[:, :, None, None], adapter.bias)
    assert torch.allclose(adapter(x), expected, atol=1e-6)
    tokens = torch.randn(2, 7, 3)
    assert torch.allclose(ChannelAdapter(3, 5, dim=-1, seed=4)(tokens), F.linear(tokens, adapter.weight, adapter.bias))


def test_seeded_initialisation_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = ChannelAdapter(4, 6, 1, seed=1), ChannelAdapter(4, 6, 1, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, ChannelAdapter(4, 6, 1, seed=2).weight)
    assert ChannelAdapter(4, 6, 1, device=torch.device("meta")).weight.is_meta


def test_a_narrower_subnet_uses_the_leading_columns() -> None:
    adapter = ChannelAdapter(6, 4, dim=1)
    x = torch.randn(3, 2)
    assert torch.allclose(adapter(x), F.linear(x, adapter.weight[:, :2], adapter.bias))
    with pytest.raises(ShapeMismatchError, match="has 7 channels along dim 1, but its adapter was sized for 6"):
        adapter(torch.randn(3, 7))
