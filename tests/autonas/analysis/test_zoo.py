"""The torchvision zoo (weights=None, built on the meta device): analysis only, concrete facts."""

from __future__ import annotations

import pytest

from modeopt_autonas.space.layers import LAYERS

from ._checks import assert_consistent
from ._zoo import analyzed

#: name -> (searchable groups, frozen groups, Sequentials with elastic depth). Reviewed by hand:
#: e.g. resnet50 = 4 residual streams (the stem joins layer1's) + 2 inner groups x 16 bottlenecks +
#: ... ; densenet121 = 58 dense layers x 2 + stem + 3 transitions; alexnet = 5 convs + 2 hidden fcs.
ZOO = {
    "resnet18": (12, 2, 4),
    "resnet50": (37, 2, 4),
    "resnext50_32x4d": (21, 2, 4),
    "wide_resnet50_2": (37, 2, 4),
    "mobilenet_v2": (25, 2, 0),
    "mobilenet_v3_small": (27, 2, 0),
    "mobilenet_v3_large": (30, 2, 0),
    "efficientnet_b0": (40, 2, 5),
    "efficientnet_v2_s": (75, 2, 6),
    "densenet121": (120, 2, 0),
    "googlenet": (61, 4, 0),
    "inception_v3": (96, 3, 0),
    "shufflenet_v2_x1_0": (18, 39, 0),
    "vit_b_16": (24, 6, 1),  # heads + MLP per block; without an example the patch reshape freezes the stream
    "convnext_tiny": (22, 2, 5),  # LayerNorm2d recognised by its forward, layer_scale sliced with the stream
    "swin_t": (25, 8, 5),  # heads + MLP per block + the last stage's stream (the others meet patch merging)
    "squeezenet1_1": (25, 2, 0),
    "alexnet": (7, 2, 0),
    "vgg11_bn": (10, 2, 0),
    "regnet_x_400mf": (27, 2, 3),
    "regnet_y_400mf": (37, 2, 3),
    "mnasnet0_5": (25, 2, 5),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_analyses_consistently(name):
    model, result = analyzed(name)
    assert_consistent(model, result)
    report = result.report
    assert (len(report.searchable_groups), len(report.frozen_groups), len(report.depth)) == ZOO[name]
    assert not report.untraceable
    assert not any("analysis error" in r for g in report.groups for r in g.reasons)
    outputs = [g for g in report.frozen_groups if "model output" in g.reasons]
    assert outputs, "the classifier output must be frozen"


def _group(name: str, member: str):
    return analyzed(name)[1].report.group_of(member)


def _binding(name: str, module: str, role: str):
    (b,) = [b for b in analyzed(name)[1].structure.bindings_of(module) if b.role == role]
    return b


def test_resnet18_layer1_residual_stream():
    stream = _group("resnet18", "conv1.out")
    assert stream.searchable and stream.width == 64
    assert {
        "bn1.features",
        "layer1.0.conv2.out",
        "layer1.1.conv2.out",
        "layer2.0.conv1.in",
        "layer2.0.downsample.0.in",
    } <= set(stream.members)
    fc_out = _group("resnet18", "fc.out")
    assert not fc_out.searchable and fc_out.reasons == ("model output",)
    layer2 = _group("resnet18", "layer2.0.downsample.0.out")
    assert {"layer2.0.conv2.out", "layer2.1.conv2.out", "layer3.0.conv1.in"} <= set(layer2.members)
    depth = {d.module: d.skippable for d in analyzed("resnet18")[1].structure.depth}
    assert depth == {"layer1": (0, 1), "layer2": (1,), "layer3": (1,), "layer4": (1,)}


def test_resnext_grouped_conv_is_tied_to_its_input_and_needs_whole_groups():
    model, _ = analyzed("resnext50_32x4d")
    group = _group("resnext50_32x4d", "layer1.0.conv1.out")
    assert {"layer1.0.conv2.in", "layer1.0.conv2.out", "layer1.0.bn2.features", "layer1.0.conv3.in"} <= set(
        group.members
    )
    assert LAYERS.spec(model.get_submodule("layer1.0.conv2")).multiple_of == 4


def test_mobilenet_v2_depthwise_is_tied_to_the_expand_conv():
    group = _group("mobilenet_v2", "features.2.conv.0.0.out")
    assert group.searchable
    assert {"features.2.conv.1.0.in", "features.2.conv.1.0.out", "features.2.conv.2.in"} <= set(group.members)
    stream = _group("mobilenet_v2", "features.2.conv.2.out")
    assert {"features.3.conv.2.out", "features.4.conv.0.0.in"} <= set(stream.members)


def test_efficientnet_b0_squeeze_excitation_scale_is_tied_to_the_depthwise_output():
    group = _group("efficientnet_b0", "features.2.0.block.0.0.out")
    assert group.searchable
    assert {
        "features.2.0.block.1.0.out",  # depthwise
        "features.2.0.block.2.fc1.in",  # SE squeeze
        "features.2.0.block.2.fc2.out",  # SE scale
        "features.2.0.block.3.0.in",  # project
    } <= set(group.members)
    assert _group("efficientnet_b0", "features.2.0.block.2.fc1.out").searchable


def test_densenet121_concat_segments_in_order():
    norm = _binding("densenet121", "features.denseblock1.denselayer2.norm1", "features")
    assert [s.group for s in norm.segments] == [
        _group("densenet121", "features.conv0.out").id,
        _group("densenet121", "features.denseblock1.denselayer1.conv2.out").id,
    ]
    transition = _binding("densenet121", "features.transition1.conv", "in")
    layers = [f"features.denseblock1.denselayer{i}.conv2.out" for i in range(1, 7)]
    expected = [_group("densenet121", m).id for m in ("features.conv0.out", *layers)]
    assert [s.group for s in transition.segments] == expected


def test_googlenet_inception_concat():
    conv_in = _binding("googlenet", "inception3b.branch1.conv", "in")
    parts = ("branch1.conv", "branch2.1.conv", "branch3.1.conv", "branch4.1.conv")
    assert [s.group for s in conv_in.segments] == [_group("googlenet", f"inception3a.{p}.out").id for p in parts]
    aux = [g for g in analyzed("googlenet")[1].report.frozen_groups if g.reasons == ("model output",)]
    assert {m for g in aux for m in g.members} == {"fc.out", "aux1.fc2.out", "aux2.fc2.out"}


def test_inception_v3_nested_concat_is_flattened():
    conv_in = _binding("inception_v3", "Mixed_7c.branch1x1.conv", "in")
    parts = ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")
    expected = [_group("inception_v3", f"Mixed_7b.{p}.conv.out").id for p in parts]
    assert [s.group for s in conv_in.segments] == expected


def test_shufflenet_branch_convs_are_searchable_but_the_shuffled_streams_are_not():
    inner = _group("shufflenet_v2_x1_0", "stage2.1.branch2.0.out")
    assert inner.searchable
    assert {"stage2.1.branch2.3.in", "stage2.1.branch2.3.out", "stage2.1.branch2.5.in"} <= set(inner.members)
    shuffled = _group("shufflenet_v2_x1_0", "stage2.0.branch2.5.out")
    # channel_shuffle computes channels // groups and views the stream into (groups, channels per group)
    assert not shuffled.searchable and any("Tensor.view" in r for r in shuffled.reasons), shuffled.reasons
    assert not _group("shufflenet_v2_x1_0", "stage2.1.branch2.0.in").searchable
    assert _group("shufflenet_v2_x1_0", "conv1.0.out").searchable  # stem feeds both stride-2 branches


def test_vit_mlp_hidden_and_heads_are_searchable():
    _, result = analyzed("vit_b_16")
    for i in range(12):
        block = f"encoder.layers.encoder_layer_{i}"
        hidden = result.report.group_of(f"{block}.mlp.0.out")
        assert hidden.searchable and hidden.width == 3072
        assert f"{block}.mlp.3.in" in hidden.members
        # nn.MultiheadAttention: 12 heads of 64 features in its q/k/v rows and its output projection's columns
        heads = result.report.group_of(f"{block}.self_attention.qkv")
        assert heads.searchable and heads.width == 12
        assert {f"{block}.self_attention.heads(x64)", f"{block}.self_attention.out_proj.in(x64)"} <= set(heads.members)
        (qkv,) = [b for b in result.structure.bindings_of(f"{block}.self_attention") if b.role == "qkv"]
        assert [(s.group, s.repeat) for s in qkv.segments] == [(heads.id, 64)] * 3
    ln1 = result.report.group_of("encoder.layers.encoder_layer_0.ln_1.features")
    assert "encoder.layers.encoder_layer_0.self_attention.in" in ln1.members  # the stream flows into it
    assert [d.module for d in result.structure.depth] == ["encoder.layers"]


def test_convnext_stream_is_searchable_with_its_layer_scales_and_channels_last_norms():
    hidden = _group("convnext_tiny", "features.1.0.block.3.out")
    assert hidden.searchable and set(hidden.members) == {"features.1.0.block.3.out", "features.1.0.block.5.in"}
    stream = _group("convnext_tiny", "features.3.0.block.5.out")
    assert stream.searchable
    # the block's layer_scale [C, 1, 1] is sliced with the stream; LayerNorm2d (permute, F.layer_norm over
    # the last dim, permute back) is a LayerNorm of its own weights
    assert "features.3.0.tensor:layer_scale" in stream.members
    assert "features.4.0.features" in stream.members  # the downsampling LayerNorm2d


def test_swin_mlp_heads_and_last_stream_are_searchable():
    hidden = _group("swin_t", "features.1.0.mlp.0.out")
    assert hidden.searchable and "features.1.0.mlp.3.in" in hidden.members
    # ShiftedWindowAttention: heads in qkv's rows (3 pieces), proj's columns and the bias table's columns
    heads = _group("swin_t", "features.7.1.attn.heads")
    assert heads.searchable and heads.width == 24
    assert {"features.7.1.attn.qkv.out[1/3](x32)", "features.7.1.attn.proj.in(x32)"} <= set(heads.members)
    assert _group("swin_t", "features.7.1.attn.qkv.in").searchable  # the last stage's stream
    # traced without an example, the (fx-wrapped) patch merging stays opaque for the other streams
    stream = _group("swin_t", "features.1.0.attn.qkv.in")
    assert not stream.searchable and any("_patch_merging_pad" in r for r in stream.reasons)


def test_squeezenet_fire_concat():
    squeeze_in = _binding("squeezenet1_1", "features.4.squeeze", "in")
    assert [s.group for s in squeeze_in.segments] == [
        _group("squeezenet1_1", "features.3.expand1x1.out").id,
        _group("squeezenet1_1", "features.3.expand3x3.out").id,
    ]


@pytest.mark.parametrize(
    ("name", "linear", "last_conv", "repeat"),
    [("alexnet", "classifier.1", "features.10", 36), ("vgg11_bn", "classifier.0", "features.25", 49)],
)
def test_flatten_after_adaptive_pool_repeats_each_channel(name, linear, last_conv, repeat):
    fc_in = _binding(name, linear, "in")
    assert len(fc_in.segments) == 1 and fc_in.segments[0].repeat == repeat
    group = _group(name, f"{last_conv}.out")
    assert group.searchable and fc_in.segments[0].group == group.id


def test_regnet_grouped_bottleneck_and_squeeze_excitation():
    model, _ = analyzed("regnet_y_400mf")
    block = "trunk_output.block1.block1-0.f"
    group = _group("regnet_y_400mf", f"{block}.a.0.out")
    assert {f"{block}.b.0.in", f"{block}.b.0.out", f"{block}.se.fc2.out", f"{block}.c.0.in"} <= set(group.members)
    assert LAYERS.spec(model.get_submodule(f"{block}.b.0")).multiple_of == 8
