"""Shrink real torchvision models as their analysis says and run them: wrong ties crash here."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.models.convnext import CNBlockConfig

from modeopt_autonas.space.analysis import analyze

from ._checks import assert_consistent
from ._slice_by_structure import check_slicing
from ._zoo import build

FAST = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5"]
SLOW = [
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_v2_s",
    "densenet121",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "swin_t",
    "alexnet",
    "regnet_x_400mf",
    "regnet_y_400mf",
]
#: Input sizes: the smallest that every architecture's downsampling survives (alexnet needs 63+).
_INPUT = {"inception_v3": 80, "alexnet": 64, "googlenet": 64}


def _shrink_and_run(model: nn.Module, size: int, rounds: int = 1) -> None:
    result = analyze(model)
    assert_consistent(model, result)
    assert result.report.searchable_groups
    widths = check_slicing(model, result.structure, torch.randn(1, 3, size, size), rounds=rounds)
    assert all(widths), "every round shrinks something"


@pytest.mark.parametrize("name", FAST)
def test_shrunk_zoo_model_runs(name):
    torch.manual_seed(0)
    _shrink_and_run(build(name, meta=False), _INPUT.get(name, 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_shrunk_zoo_model_runs_slow(name):
    torch.manual_seed(0)
    _shrink_and_run(build(name, meta=False), _INPUT.get(name, 32))


def test_shrunk_small_vision_transformer_runs():
    torch.manual_seed(0)
    model = models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    _shrink_and_run(model, 32, rounds=2)


def test_shrunk_small_swin_runs():
    torch.manual_seed(0)
    model = models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2], num_classes=5
    )
    _shrink_and_run(model, 32, rounds=2)


def test_shrunk_small_convnext_runs():
    torch.manual_seed(0)
    model = models.ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 1)], num_classes=5)
    _shrink_and_run(model, 32, rounds=2)
