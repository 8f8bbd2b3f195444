"""The ``autonas`` search space of every torchvision model of the coverage tests, as a markdown table.

Per model: configurable hparams (channel widths / elastic depths), search-space size, what is frozen
besides the model's input and output channels (and why, summarised from ``SearchSpace.frozen``),
the time of ``apply_mode(model, ["autonas"])`` (analysis + conversion, one thread), and FLOPs and
params of the smallest subnet relative to the full model (analytic, at the input size shown).

Models and input sizes are those of ``tests/autonas/_zoo_cases.py`` (random weights, 10 classes).
The table in ``docs/architectures.md`` is this script's output:

    .venv/bin/python bench/zoo_table.py [--models resnet18 vit_b_16] [--details]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.autonas

import modeopt_autonas as mtn
import modeopt_core as mo
from tests.autonas._zoo_cases import ZOO, build, zoo_input

#: reasons every model has: they are not listed per model
_ALWAYS = ("fed by model input", "model output")

#: (pattern over a frozen reason, short label) - first match wins; unmatched reasons are shown as is
_LABELS = [
    (r"the rules leave a single width", "narrow layer (one width at divisor 8)"),
    (r"parameter \S*layer_scale", "`layer_scale` parameter on the stream (would need slicing)"),
    (r"functional\.layer_norm", "`LayerNorm2d` (functional `layer_norm` on permuted input)"),
    (r"Tensor\.permute", "`LayerNorm2d` (functional `layer_norm` on permuted input)"),
    (r"\(Flatten\)", "head after `LayerNorm2d`"),
    (r"Tensor\.chunk", "channel split (`chunk`)"),
    (r"Tensor\.view", "channel shuffle (`view`/`transpose`)"),
    (r"MultiheadAttention", "`nn.MultiheadAttention` (opaque: fused in-projection)"),
    (r"shifted_window_attention", "shifted-window attention (functional)"),
    (r"_patch_merging_pad", "patch merging (functional pad/slices)"),
    (r"Tensor\.reshape", "patch embedding (`reshape` of spatial dims)"),
    (r"torch\.cat", "class token (`cat` along tokens)"),
    (r"operator\.getitem", "class token read-out (`x[:, 0]`)"),
]


def _label(reason: str) -> str:
    for pattern, label in _LABELS:
        if re.search(pattern, reason):
            return label
    return reason


def _frozen_summary(frozen: dict[str, str]) -> tuple[str, int]:
    """A short summary of the frozen hparams beyond the model's input/output, and the output count."""
    outputs = sum(1 for why in frozen.values() if why == "model output")
    counts = Counter(_label(why) for why in frozen.values() if why not in _ALWAYS)
    parts = [f"{n}x {label}" if n > 1 else label for label, n in counts.items()]
    return ("; ".join(parts) or "-"), outputs


def _kind(name: str) -> str:
    if name.endswith((".depth", ".keep")) or name in ("depth", "keep"):
        return "depth"
    if name.endswith(".kernel_size"):
        return "kernel"
    return "channel"


def row(name: str) -> dict[str, object]:
    """Measure one model."""
    model = build(name)
    x = zoo_input(name)
    start = time.perf_counter()
    model = mo.apply_mode(model, ["autonas"])
    convert_s = time.perf_counter() - start
    space = mtn.get_search_space(model)
    kinds = Counter(_kind(n) for n, _ in space.named_hparams(True))
    profiler = mtn.SubnetProfiler(space, x)
    smallest = {n: hp.min for n, hp in space.named_hparams(True)}
    frozen, outputs = _frozen_summary(space.frozen)
    return {
        "model": name,
        "input": f"{ZOO[name].size}x{ZOO[name].size}",
        "hparams": sum(kinds.values()),
        "channel": kinds["channel"],
        "depth": kinds["depth"],
        "log10_size": math.log10(space.size()),
        "outputs": outputs,
        "frozen": frozen,
        "frozen_detail": space.frozen,
        "convert_s": convert_s,
        "min_flops": profiler.flops(smallest) / profiler.flops(),
        "min_params": profiler.params(smallest) / profiler.params(),
    }


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | input | hparams (channel + depth) | subnets | frozen besides input/output | convert | "
        "min FLOPs | min params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        outputs = f" ({r['outputs']} outputs)" if r["outputs"] != 1 else ""
        lines.append(
            f"| {r['model']} | {r['input']} | {r['hparams']} ({r['channel']} + {r['depth']}) | "
            f"10^{r['log10_size']:.1f} | {r['frozen']}{outputs} | {r['convert_s']:.2f} s | "
            f"{r['min_flops']:.0%} | {r['min_params']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO), metavar="NAME")
    parser.add_argument("--details", action="store_true", help="also list every frozen hparam and its reason")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mo.apply_mode(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)), ["autonas"])  # warm-up: imports, fx
    rows = []
    for name in args.models:
        rows.append(row(name))
        print(f"measured {name}", file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.details:
        for r in rows:
            print(f"\n{r['model']}:")
            for hp, why in r["frozen_detail"].items():  # type: ignore[attr-defined]
                print(f"  {hp}: {why}")


if __name__ == "__main__":
    main()
