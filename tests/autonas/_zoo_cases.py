"""The torchvision zoo of the coverage tests and ``bench/zoo_table.py``: how to build and feed each model.

Models are built with random weights (``weights=None``, 10 classes) and then *enlivened*: constant
parameters (zero-initialised heads, unit norm scales, ConvNeXt's 1e-6 layer scales) get random
values and batch-norm statistics are estimated from random data. Without that, several models
answer (near-)constant logits (ViT's zero head, MobileNetV3's tiny outputs), and comparing a subnet
with its export would prove nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ZOO", "ZooCase", "build", "enliven", "zoo_input"]


@dataclass(frozen=True)
class ZooCase:
    """How to build one torchvision model for the coverage run.

    ``default`` cases run in the default (fast) test run, the others only with ``-m slow``.
    """

    name: str
    size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)
    default: bool = False


_CASES = [
    ZooCase("resnet18", default=True),
    ZooCase("resnet50"),
    ZooCase("resnext50_32x4d"),
    ZooCase("wide_resnet50_2"),
    ZooCase("mobilenet_v2"),
    ZooCase("mobilenet_v3_small", default=True),
    ZooCase("mobilenet_v3_large"),
    ZooCase("efficientnet_b0", default=True),
    ZooCase("efficientnet_v2_s"),
    ZooCase("regnet_x_400mf"),
    ZooCase("regnet_y_400mf"),
    ZooCase("convnext_tiny"),
    ZooCase("densenet121", default=True),
    ZooCase("shufflenet_v2_x1_0"),
    ZooCase("squeezenet1_1", default=True),
    ZooCase("mnasnet0_5"),
    # init_weights=True: without it torchvision warns that its default init will change (an error here)
    ZooCase("googlenet", kwargs={"init_weights": True}, default=True),
    # the smallest input its stem and stride-2 reductions accept is 75x75
    ZooCase("inception_v3", size=80, kwargs={"init_weights": True}),
    ZooCase("vgg11_bn"),
    ZooCase("alexnet"),
    # 32x32 images = 2x2 patches of 16: the positional embedding follows image_size
    ZooCase("vit_b_16", size=32, kwargs={"image_size": 32}, default=True),
    ZooCase("swin_t", default=True),
]

ZOO: dict[str, ZooCase] = {c.name: c for c in _CASES}


def zoo_input(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random input of the case's size."""
    size = ZOO[name].size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def enliven(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Give constant parameters random values and estimate batch-norm statistics on ``x`` (batch > 1)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.numel() < 2 or not bool((p == p.flatten()[0]).all()):
            continue
        if float(p.flatten()[0]) != 0.0:  # unit norm scales, layer scales: around 1
            p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=gen))
        else:  # zero biases and zero-initialised heads: small noise
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() == 1 else 0.02))
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    was = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    # Only the norms in train mode: the model itself stays in eval (no aux heads, no dropout).
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
        m.train()
    model(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    for m, flag in was.items():
        m.training = flag


def build(name: str, seed: int = 0) -> nn.Module:
    """The enlivened model of case ``name`` in eval mode."""
    case = ZOO[name]
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **case.kwargs)
    enliven(model, zoo_input(name, batch=4, seed=seed + 1), seed)
    return model.eval()
