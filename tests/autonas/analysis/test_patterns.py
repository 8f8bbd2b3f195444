"""One tying pattern per small hand-written model: concrete groups, then shrink-and-run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeopt_autonas.space.analysis import analyze

from . import _models as M
from ._checks import assert_consistent
from ._slice_by_structure import check_slicing


def _analyze(model: nn.Module):
    result = analyze(model)
    assert_consistent(model, result)
    return result


def _members(result, member: str) -> set[str]:
    return set(result.report.group_of(member).members)


def test_residual_stream_is_one_searchable_group_with_downsample_shortcut():
    torch.manual_seed(0)
    model = M.ResNetLike()
    result = _analyze(model)
    report = result.report
    stream1 = report.group_of("stem.0.out")
    assert stream1.searchable
    assert {
        "stem.1.features",
        "stage1.0.conv1.in",
        "stage1.0.conv2.out",
        "stage1.1.conv2.out",
        "stage2.0.body.0.in",
        "stage2.0.short.in",
    } <= set(stream1.members)
    stream2 = report.group_of("stage2.0.short.out")
    assert stream2.searchable and stream2.id != stream1.id
    assert {"stage2.0.body.0.out", "stage2.1.conv2.out", "stage2.2.conv2.out", "fc.in"} <= set(stream2.members)
    assert set(report.group_of("stage1.0.conv1.out").members) == {
        "stage1.0.conv1.out",
        "stage1.0.bn1.features",
        "stage1.0.conv2.in",
    }
    assert len(report.searchable_groups) == 6
    assert report.group_of("fc.out").reasons == ("model output",)
    assert report.group_of("stem.0.in").reasons == ("fed by model input",)
    check_slicing(model, result.structure, torch.randn(2, 3, 16, 16))


def test_concat_parts_become_segments_in_order_and_nested_concats_flatten():
    torch.manual_seed(0)
    model = M.ConcatNet()
    result = _analyze(model)
    s = result.structure
    (mix_in,) = [b for b in s.bindings_of("mix") if b.role == "in"]
    out_group = {b.module: b.segments[0].group for b in s.bindings if b.role == "out"}
    assert [seg.group for seg in mix_in.segments] == [out_group["a"], out_group["b"]]
    (bn,) = s.bindings_of("bn")
    assert [seg.group for seg in bn.segments] == [out_group["a"], out_group["c"], out_group["d"]]
    (head_in,) = [b for b in s.bindings_of("head") if b.role == "in"]
    assert head_in.segments == bn.segments
    assert all(g.searchable for g in s.groups if g.id in out_group.values() and g.id != out_group["head"])
    check_slicing(model, s, torch.randn(2, 3, 8, 8), rounds=3)


def test_depthwise_and_grouped_convs_pass_channels_through():
    torch.manual_seed(0)
    model = M.DepthwiseNet()
    result = _analyze(model)
    group = result.report.group_of("expand.out")
    assert group.searchable
    assert {"dw.in", "dw.out", "bn2.features", "grouped.in", "grouped.out", "gn.features", "project.in"} <= set(
        group.members
    )
    odd = result.report.group_of("odd.in")
    assert not odd.searchable and "groups=2" in odd.reasons[0]
    assert "project.out" in odd.members  # the producer feeding a frozen grouped conv is frozen too
    widths = check_slicing(model, result.structure, torch.randn(1, 3, 8, 8), rounds=3)
    assert all(w[group.id] % 4 == 0 for w in widths)  # multiple of the grouped conv's group size


def test_squeeze_excitation_ties_the_scale_with_the_scaled_map():
    torch.manual_seed(0)
    model = M.SENet()
    result = _analyze(model)
    assert {"conv.0.out", "se.fc1.in", "se.fc2.out", "conv2.in"} <= _members(result, "conv.1.features")
    assert {"conv2.out", "se2.fc1.in", "se2.fc2.out", "out.in"} <= _members(result, "conv2.out")
    assert result.report.group_of("se.fc1.out").searchable
    assert len(result.report.searchable_groups) == 4
    check_slicing(model, result.structure, torch.randn(2, 3, 8, 8), rounds=3)


@pytest.mark.parametrize("use_view", [False, True])
def test_flatten_into_linear_repeats_each_channel(use_view):
    torch.manual_seed(0)
    model = M.FlattenNet(use_view)
    result = _analyze(model)
    (fc_in,) = [b for b in result.structure.bindings_of("classifier.1") if b.role == "in"]
    assert len(fc_in.segments) == 1 and fc_in.segments[0].repeat == 9
    assert result.report.group_of("features.0.0.out").id == fc_in.segments[0].group
    assert result.report.group_of("features.0.0.out").searchable
    check_slicing(model, result.structure, torch.randn(2, 3, 12, 12), rounds=3)


def test_convnext_style_permute_keeps_the_stream_and_the_mlp_searchable():
    torch.manual_seed(0)
    model = M.NeXtNet()
    result = _analyze(model)
    stream = result.report.group_of("stem.out")
    assert stream.searchable
    assert {"blocks.0.dw.in", "blocks.0.norm.features", "blocks.0.pw1.in", "blocks.0.pw2.out", "head.in"} <= set(
        stream.members
    )
    assert set(result.report.group_of("blocks.1.pw1.out").members) == {"blocks.1.pw1.out", "blocks.1.pw2.in"}
    assert len(result.report.searchable_groups) == 3
    check_slicing(model, result.structure, torch.randn(1, 3, 16, 16), rounds=3)


def test_tokens_from_a_patch_conv_keep_their_channel_dim():
    torch.manual_seed(0)
    model = M.TinyViT()
    result = _analyze(model)
    stream = result.report.group_of("patch.out")
    assert stream.searchable
    assert {"ln1.features", "mlp1.0.in", "mlp1.2.out", "ln2.features", "mlp2.2.out", "head.in"} <= set(stream.members)
    check_slicing(model, result.structure, torch.randn(2, 3, 16, 16), rounds=3)


def test_linear_batchnorm1d_mlp_on_a_flat_input():
    model = nn.Sequential(
        nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )
    result = _analyze(model)
    assert set(result.report.group_of("0.out").members) == {"0.out", "1.features", "3.in"}
    assert len(result.report.searchable_groups) == 2
    check_slicing(model, result.structure, torch.randn(4, 20), rounds=3)


def test_unsupported_ops_freeze_with_reasons_and_never_raise():
    model = M.Unsupported()
    result = _analyze(model)
    report = result.report
    assert not report.searchable_groups
    assert "flows into torch.functional.einsum" in report.group_of("a.out").reasons[0]
    assert report.group_of("b.out").reasons[0].startswith("split along the channel dim by Tensor.chunk")
    assert any("torch.roll" in r for r in report.group_of("c.out").reasons)
    assert report.group_of("d.out").reasons[0].startswith("channel dim indexed by operator.getitem")
    assert report.group_of("e.in").reasons[0] == "fed by output of Tensor.repeat"
    check_slicing(model, result.structure, torch.randn(1, 3, 8, 8), rounds=1)


def test_broadcast_with_numbers_and_size_one_parameters_passes_and_channel_parameters_follow():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 4, 1)
            self.bias = nn.Parameter(torch.zeros(1, 1, 1, 1))
            self.gamma = nn.Parameter(torch.ones(8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x) * 2.0 + self.bias
            return self.c(self.b(x) * self.gamma)

    model = Scaled()
    result = _analyze(model)
    assert result.report.group_of("a.out").searchable
    scaled = result.report.group_of("b.out")  # gamma [8, 1, 1] is sliced with b's channels
    assert scaled.searchable and "(model).tensor:gamma" in scaled.members
    (binding,) = [b for b in result.structure.bindings if b.role == "tensor:gamma"]
    assert binding.module == "" and binding.tensors == (("gamma", 0),)
    check_slicing(model, result.structure, torch.randn(1, 3, 4, 4))


def test_width_one_broadcast_freezes_only_the_width_one_side():
    class SpatialGate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.gate = nn.Conv2d(8, 1, 1)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            return self.b(x * torch.sigmoid(self.gate(x)))

    model = SpatialGate()
    result = _analyze(model)
    assert result.report.group_of("a.out").searchable
    assert "width 1 broadcast" in result.report.group_of("gate.out").reasons[0]
    check_slicing(model, result.structure, torch.randn(1, 3, 4, 4))


def test_shared_module_called_twice_ties_both_inputs():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(3, 6, 3, padding=1)
            self.shared = nn.Conv2d(6, 5, 1)
            self.out = nn.Conv2d(5, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.shared(self.a(x)) + self.shared(self.b(x)))

    model = Shared()
    result = _analyze(model)
    assert {"a.out", "b.out", "shared.in"} <= _members(result, "a.out")
    assert result.report.group_of("shared.out").searchable
    check_slicing(model, result.structure, torch.randn(1, 3, 4, 4))


def test_getitem_keeps_channels_when_indexing_other_dims():
    class Indexing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 4, 1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.a(x)[:, :, 1:, None, ..., ::2].squeeze(3)
            return self.b(y), self.fc(y[..., 0, 0])

    model = Indexing()
    result = _analyze(model)
    assert {"a.out", "b.in", "fc.in"} <= _members(result, "a.out")
    assert result.report.group_of("a.out").searchable
    check_slicing(model, result.structure, torch.randn(1, 3, 6, 6), rounds=3)


def test_chunk_along_another_dim_keeps_channels():
    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top, bottom = self.a(x).chunk(2, dim=2)
            return self.b(torch.cat([top, bottom], dim=3))

    model = Halves()
    result = _analyze(model)
    assert result.report.group_of("a.out").searchable
    assert "b.in" in _members(result, "a.out")
    check_slicing(model, result.structure, torch.randn(1, 3, 4, 4))


def test_spatial_and_elementwise_ops_pass_channels_but_padding_the_channel_dim_freezes():
    from torchvision.ops import StochasticDepth

    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.up = nn.Upsample(scale_factor=2)
            self.pad = nn.ZeroPad2d(1)
            self.drop = StochasticDepth(0.2, "row")
            self.b = nn.Conv2d(6, 5, 3)
            self.c = nn.Conv2d(7, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.interpolate(self.a(x), scale_factor=0.5, mode="nearest")
            y = F.max_pool2d(self.pad(self.up(y)), 2, stride=1)
            y = self.drop(F.pad(y, (1, 1, 0, 0)).contiguous().to(torch.float32).detach().clone())
            y = self.b(torch.nn.functional.hardswish(y))
            return self.c(F.pad(y, (0, 0, 0, 0, 1, 1)))  # pads channels 5 -> 7

    model = Spatial()
    result = _analyze(model)
    assert result.report.group_of("a.out").searchable and "b.in" in _members(result, "a.out")
    assert "pads the channel dim" in result.report.group_of("b.out").reasons[0]
    check_slicing(model, result.structure, torch.randn(1, 3, 8, 8))
