"""Hand-built ``SpaceStructure``s and rules for the search-space tests (the analysis is tested apart)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from modeopt_autonas.space.structure import Binding, ChannelGroup, DepthSpec, Segment, SpaceStructure


class StructureBuilder:
    """Small helper to write structures by hand: ``g = b.group(16); b.bind("conv", "out", g)``."""

    def __init__(self) -> None:
        self.groups: list[ChannelGroup] = []
        self.bindings: list[Binding] = []
        self.depth: list[DepthSpec] = []

    def group(self, size: int, searchable: bool = True, reason: str = "") -> int:
        gid = len(self.groups)
        self.groups.append(ChannelGroup(gid, size, searchable, reason))
        return gid

    def frozen(self, size: int, reason: str = "boundary") -> int:
        return self.group(size, False, reason)

    def bind(self, module: str, role: str, *segments: int | Segment | tuple[int, int]) -> None:
        segs = []
        for s in segments:
            if isinstance(s, Segment):
                segs.append(s)
            elif isinstance(s, tuple):
                segs.append(Segment(*s))
            else:
                segs.append(Segment(s))
        self.bindings.append(Binding(module, role, tuple(segs)))

    def chain(self, module: str, gin: int, gout: int) -> None:
        """A producer reading ``gin`` and writing ``gout``."""
        self.bind(module, "in", gin)
        self.bind(module, "out", gout)

    def depth_spec(self, module: str, skippable: Iterable[int]) -> None:
        self.depth.append(DepthSpec(module, tuple(skippable)))

    def build(self) -> SpaceStructure:
        return SpaceStructure(groups=self.groups, bindings=self.bindings, depth=self.depth)


def make_rules(
    ratios: Iterable[float] = (0.25, 0.5, 0.75, 1.0),
    divisor: int = 1,
    kernel: Iterable[int] = (),
    min_depth: int = 0,
    frozen: Iterable[str] = (),
) -> Any:
    """A rules callable giving every module the same resolved rule (modules in ``frozen`` get None)."""
    ratios, kernel, frozen = list(ratios), list(kernel), set(frozen)

    def rules(name: str, module: nn.Module) -> dict[str, Any] | None:
        if name in frozen:
            return None
        if isinstance(module, nn.Sequential):
            return {"min_depth": min_depth}
        if isinstance(module, nn.modules.conv._ConvNd):
            return {"channels_ratio": ratios, "channel_divisor": divisor, "kernel_size": kernel}
        if isinstance(module, nn.GroupNorm):
            return {"channels_ratio": ratios, "channel_divisor": divisor}
        return {"features_ratio": ratios, "feature_divisor": divisor}

    return rules


def resnet_structure(model: nn.Module) -> SpaceStructure:
    """Structure of a torchvision ResNet (basic or bottleneck blocks), with elastic stage depth."""
    b = StructureBuilder()
    b.bind("conv1", "in", b.frozen(3, "model input"))
    stream = b.group(model.conv1.out_channels)
    b.bind("conv1", "out", stream)
    b.bind("bn1", "features", stream)
    for li in range(1, 5):
        layer = getattr(model, f"layer{li}")
        blocks = list(layer)
        convs = [c for c in ("conv1", "conv2", "conv3") if hasattr(blocks[0], c)]
        new = stream
        if blocks[0].downsample is not None:
            new = b.group(blocks[0].downsample[0].out_channels)
            b.chain(f"layer{li}.0.downsample.0", stream, new)
            b.bind(f"layer{li}.0.downsample.1", "features", new)
        for bi, blk in enumerate(blocks):
            prefix = f"layer{li}.{bi}"
            current = stream if bi == 0 else new
            b.bind(f"{prefix}.conv1", "in", current)
            for ci, c in enumerate(convs):
                last = ci == len(convs) - 1
                g = new if last else b.group(getattr(blk, c).out_channels)
                b.bind(f"{prefix}.{c}", "out", g)
                b.bind(f"{prefix}.bn{ci + 1}", "features", g)
                if not last:
                    b.bind(f"{prefix}.{convs[ci + 1]}", "in", g)
        stream = new
        b.depth_spec(f"layer{li}", [i for i, blk in enumerate(blocks) if blk.downsample is None])
    b.bind("fc", "in", stream)
    b.bind("fc", "out", b.frozen(model.fc.out_features, "model output"))
    return b.build()


def squeezenet_structure(model: nn.Module) -> SpaceStructure:
    """Structure of torchvision SqueezeNet 1.0/1.1: Fire expand branches are concat segments."""
    b = StructureBuilder()
    b.bind("features.0", "in", b.frozen(3, "model input"))
    segments: list[int] = [b.group(model.features[0].out_channels)]
    b.bind("features.0", "out", segments[0])
    for i, m in enumerate(model.features):
        if type(m).__name__ != "Fire":
            continue
        squeeze = b.group(m.squeeze.out_channels)
        b.bind(f"features.{i}.squeeze", "in", *segments)
        b.bind(f"features.{i}.squeeze", "out", squeeze)
        e1, e3 = b.group(m.expand1x1.out_channels), b.group(m.expand3x3.out_channels)
        b.chain(f"features.{i}.expand1x1", squeeze, e1)
        b.chain(f"features.{i}.expand3x3", squeeze, e3)
        segments = [e1, e3]
    b.bind("classifier.1", "in", *segments)
    b.bind("classifier.1", "out", b.frozen(model.classifier[1].out_channels, "model output"))
    return b.build()
