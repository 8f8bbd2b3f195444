"""Forward-pass overhead of a converted supernet at the max subnet, and search-query timings.

Prints, for torchvision ResNet-50 and a small CNN on 4x3x224x224 with 2 threads, the ratio
converted/original of the median forward latency (10 timed runs after warm-up, interleaved so both
models see the same machine load; wall-clock and process CPU time), plus the cost of a ``select`` and of analytic FLOPs/params queries.

    .venv/bin/python bench/forward_overhead.py [--runs 10] [--batch 4] [--size 224]
"""

from __future__ import annotations

import argparse
import copy
import random
import shlex
import statistics
import sys
import time

import torch
import torchvision
from torch import nn

from modeopt_autonas.space import SearchSpace
from modeopt_autonas.space.profile import SubnetProfiler
from modeopt_autonas.space.structure import Binding, ChannelGroup, DepthSpec, Segment, SpaceStructure


class _Builder:
    def __init__(self) -> None:
        self.groups: list[ChannelGroup] = []
        self.bindings: list[Binding] = []
        self.depth: list[DepthSpec] = []

    def group(self, size: int, searchable: bool = True) -> int:
        self.groups.append(ChannelGroup(len(self.groups), size, searchable, "" if searchable else "boundary"))
        return len(self.groups) - 1

    def bind(self, module: str, role: str, group: int, repeat: int = 1) -> None:
        self.bindings.append(Binding(module, role, (Segment(group, repeat),)))

    def structure(self) -> SpaceStructure:
        return SpaceStructure(self.groups, self.bindings, self.depth)


def resnet_structure(model: torchvision.models.ResNet) -> SpaceStructure:
    """Every conv/bn/fc bound, residual streams shared, stage depth elastic (hand-built)."""
    b = _Builder()
    b.bind("conv1", "in", b.group(3, False))
    stream = b.group(model.conv1.out_channels)
    b.bind("conv1", "out", stream)
    b.bind("bn1", "features", stream)
    for li in range(1, 5):
        blocks = list(getattr(model, f"layer{li}"))
        convs = [c for c in ("conv1", "conv2", "conv3") if hasattr(blocks[0], c)]
        new = stream
        if blocks[0].downsample is not None:
            new = b.group(blocks[0].downsample[0].out_channels)
            b.bind(f"layer{li}.0.downsample.0", "in", stream)
            b.bind(f"layer{li}.0.downsample.0", "out", new)
            b.bind(f"layer{li}.0.downsample.1", "features", new)
        for bi, blk in enumerate(blocks):
            b.bind(f"layer{li}.{bi}.conv1", "in", stream if bi == 0 else new)
            for ci, c in enumerate(convs):
                last = ci == len(convs) - 1
                g = new if last else b.group(getattr(blk, c).out_channels)
                b.bind(f"layer{li}.{bi}.{c}", "out", g)
                b.bind(f"layer{li}.{bi}.bn{ci + 1}", "features", g)
                if not last:
                    b.bind(f"layer{li}.{bi}.{convs[ci + 1]}", "in", g)
        stream = new
        b.depth.append(DepthSpec(f"layer{li}", tuple(i for i, k in enumerate(blocks) if k.downsample is None)))
    b.bind("fc", "in", stream)
    b.bind("fc", "out", b.group(model.fc.out_features, False))
    return b.structure()


def small_cnn() -> tuple[nn.Module, SpaceStructure]:
    """Four conv-bn-relu stages, global pool, linear head."""
    widths = [3, 32, 64, 128, 256]
    layers: list[nn.Module] = []
    b = _Builder()
    prev = b.group(3, False)
    for i in range(4):
        layers += [
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
            nn.BatchNorm2d(widths[i + 1]),
            nn.ReLU(),
        ]
        g = b.group(widths[i + 1])
        b.bind(f"{3 * i}", "in", prev)
        b.bind(f"{3 * i}", "out", g)
        b.bind(f"{3 * i + 1}", "features", g)
        prev = g
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
    b.bind("14", "in", prev)
    b.bind("14", "out", b.group(10, False))
    return nn.Sequential(*layers), b.structure()


def _rules(name: str, module: nn.Module) -> dict:
    if isinstance(module, nn.Sequential):
        return {"min_depth": 1}
    if isinstance(module, nn.Conv2d):
        return {"channels_ratio": [0.25, 0.5, 0.75, 1.0], "channel_divisor": 8}
    return {"features_ratio": [0.25, 0.5, 0.75, 1.0], "feature_divisor": 8}


def _median_pair(a: nn.Module, b: nn.Module, x: torch.Tensor, runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU seconds of ``a(x)`` and ``b(x)`` (CPU time is steadier on a shared box)."""
    times: dict[str, tuple[list[float], list[float]]] = {"wall": ([], []), "cpu": ([], [])}
    with torch.inference_mode():
        for _ in range(2):
            a(x)
            b(x)
        for i in range(runs):
            order = ((a, 0), (b, 1)) if i % 2 == 0 else ((b, 1), (a, 0))  # alternate who runs first
            for model, slot in order:
                w0, c0 = time.perf_counter(), time.process_time()
                model(x)
                times["wall"][slot].append(time.perf_counter() - w0)
                times["cpu"][slot].append(time.process_time() - c0)
    out = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items()}
    out["wall-min"] = (min(times["wall"][0]), min(times["wall"][1]))  # least disturbed by other load
    return out


def _python_overhead(a: nn.Module, b: nn.Module, runs: int = 50) -> float:
    """Extra seconds per forward of ``b`` over ``a`` on a tiny input with one thread (min of many),
    which isolates the per-forward Python cost of the dynamic modules from the compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 32, 32)
    best = [float("inf"), float("inf")]
    try:
        with torch.inference_mode():
            for _ in range(runs):
                for slot, model in enumerate((a, b)):
                    t0 = time.perf_counter()
                    model(x)
                    best[slot] = min(best[slot], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best[1] - best[0]


def _bench(name: str, model: nn.Module, structure: SpaceStructure, x: torch.Tensor, runs: int) -> None:
    model.eval()
    converted = copy.deepcopy(model)
    space = SearchSpace.build(converted, structure, _rules)
    for kind, (orig, conv) in _median_pair(model, converted, x, runs).items():
        print(
            f"{name} [{kind}]: original {orig * 1e3:.1f} ms, converted(max) {conv * 1e3:.1f} ms, "
            f"ratio {conv / orig:.3f}"
        )
    extra = _python_overhead(model, converted)
    print(f"{name}: per-forward Python overhead at max (1x3x32x32, 1 thread, min of 50): {extra * 1e6:.0f} us")

    rng = random.Random(0)
    configs = [space.sample("random", rng) for _ in range(200)]
    t0 = time.perf_counter()
    for cfg in configs:
        space.select(cfg)
    t_select = (time.perf_counter() - t0) / len(configs)
    space.sample("max")
    profiler = SubnetProfiler(space, x[:1])
    t0 = time.perf_counter()
    for cfg in configs:
        profiler.flops(cfg)
    t_flops = (time.perf_counter() - t0) / len(configs)
    t0 = time.perf_counter()
    for cfg in configs:
        profiler.params(cfg)
    t_params = (time.perf_counter() - t0) / len(configs)
    space.select(configs[0])
    with torch.inference_mode():
        t0 = time.perf_counter()
        converted(x)  # first forward after select rebuilds the slice plans
        t_first = time.perf_counter() - t0
    print(
        f"{name}: {len(space.config())} hparams; select {t_select * 1e6:.0f} us, flops(config) "
        f"{t_flops * 1e6:.0f} us, params(config) {t_params * 1e6:.0f} us, first forward at a random "
        f"subnet {t_first * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    resnet = torchvision.models.resnet50()
    _bench("resnet50", resnet, resnet_structure(resnet), x, args.runs)
    cnn, structure = small_cnn()
    _bench("small_cnn", cnn, structure, x, args.runs)
    # The digits CNN at batch 256, converted through apply_mode: bench/exported_speed.py ("@ max" rows).
    print("reproduce: " + shlex.join([".venv/bin/python", "bench/forward_overhead.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
