"""CPU latency of exported subnets vs the original model, next to their FLOPs and params ratios.

For ResNet-18 (1x3x224x224) and the digits CNN (256x1x8x8), with random weights, times:

* ``original``: the unconverted model;
* ``fastnas @ max`` / ``autonas @ max``: the model after ``apply_mode(..., [mode])`` at its largest
  subnet (the forward overhead of the dynamic modules and, for ``autonas``, of its training hooks);
* FastNAS subnets (data-free output-agreement score on small random batches; the sensitivity map is
  computed once and reused for the second budget) and AutoNAS ``min``/``random`` subnets (ResNet-18),
  each as the converted model with the subnet selected (``@ subnet``) and after ``export``.

Latency is the median of ``--runs`` (digits: ``--digits-runs``) forward passes after warm-up, all variants of a model timed
round-robin so they share the machine's load. FLOPs are counted by ``torch.utils.flop_counter`` on the
timed input (convolutions and matmuls only).

    .venv/bin/python bench/exported_speed.py [--runs 10] [--digits-runs 30] [--budgets 60%,50%]
                                             [--digits-budgets 50%,30%] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from _common import add_common_args, machine_line, markdown_table, measure_interleaved, reproduce_line, set_threads
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_core as mo
from modeopt_autonas import StaleBatchNormWarning, get_search_space
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from modeopt_fastnas.digits import DigitsResNet


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter, warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleBatchNormWarning)
        model(x)
    return int(counter.get_total_flops())


def _at(template: nn.Module, mode: str, config: dict[str, int] | None) -> nn.Module:
    """A fresh copy of ``template`` converted by ``mode`` with subnet ``config`` (max when None) selected."""
    model = mo.apply_mode(copy.deepcopy(template), [mode])
    if config is not None:
        get_search_space(model).select(config)
    return model.eval()


def _fastnas_subnets(template: nn.Module, budgets: list[str], score_shape: tuple[int, ...],
                     dummy: torch.Tensor) -> dict[str, dict[str, int]]:
    """FastNAS subnet configs for each FLOPs budget (one sensitivity map, reused through its checkpoint)."""
    score = OutputAgreement(template, random_inputs(score_shape, num_batches=1))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            model = mo.apply_mode(copy.deepcopy(template), ["fastnas"])
            model, res = prune(model, {"flops": budget}, dummy, {
                "score_func": score, "verbose": False, "checkpoint": str(Path(tmp) / "search.ckpt")})
            out[budget] = dict(res["subnet"])
    return out


def _variants(template: nn.Module, fastnas: dict[str, dict[str, int]],
              autonas: dict[str, dict[str, int]]) -> dict[str, nn.Module]:
    variants: dict[str, nn.Module] = {
        "original": template.eval(),
        "fastnas @ max": _at(template, "fastnas", None),
        "autonas @ max": _at(template, "autonas", None),
    }
    for label, mode, configs in (("FastNAS", "fastnas", fastnas), ("AutoNAS", "autonas", autonas)):
        for name, config in configs.items():
            variants[f"{label} {name} @ subnet"] = _at(template, mode, config)
            variants[f"{label} {name} exported"] = mo.export(_at(template, mode, config)).eval()
    return variants


def _autonas_subnets(template: nn.Module) -> dict[str, dict[str, int]]:
    model = mo.apply_mode(copy.deepcopy(template), ["autonas"])
    space = get_search_space(model)
    return {"min": space.sample("min"), "random": space.sample("random", rng=random.Random(0))}


def _table(name: str, variants: dict[str, nn.Module], x: torch.Tensor, runs: int) -> list[list[str]]:
    fns: dict[str, Callable[[], object]] = {}
    for label, model in variants.items():
        fns[label] = (lambda m: (lambda: m(x)))(model)
    with torch.inference_mode(), warnings.catch_warnings():
        # '@ subnet' models keep the supernet's BN statistics: irrelevant for latency
        warnings.simplefilter("ignore", StaleBatchNormWarning)
        timings = measure_interleaved(fns, runs, warmup=2)
    base = variants["original"]
    base_flops, base_params = _flops(base, x), sum(p.numel() for p in base.parameters())
    base_ms = 1e3 * timings["original"].median
    rows = []
    for label, model in variants.items():
        exported = label in ("original",) or label.endswith("exported")
        params = sum(p.numel() for p in model.parameters()) if exported else None
        t = timings[label]
        rows.append([
            name, label,
            f"{100 * _flops(model, x) / base_flops:.1f}%",
            f"{100 * params / base_params:.1f}%" if params is not None else "-",
            f"{1e3 * t.median:.2f}",
            f"{1e3 * t.cpu_median:.2f}",
            f"{1e3 * t.median / base_ms:.2f}",
            f"{100 * t.spread:.0f}%",
        ])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=10)
    parser.add_argument("--size", type=int, default=224, help="ResNet-18 input height/width (default 224)")
    parser.add_argument("--batch", type=int, default=1, help="ResNet-18 batch (default 1)")
    parser.add_argument("--digits-batch", type=int, default=256, help="digits CNN batch (default 256)")
    parser.add_argument("--budgets", default="60%,50%", help="ResNet-18 FastNAS FLOPs budgets (default 60%%,50%%)")
    parser.add_argument("--digits-budgets", default="50%,30%", help="digits FastNAS FLOPs budgets (default 50%%,30%%)")
    parser.add_argument("--digits-runs", type=int, default=30, help="timed runs for the digits CNN (default 30)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    size, runs = (64, 2) if args.quick else (args.size, args.runs)
    budgets = args.budgets.split(",")
    print(f"# Exported-model latency (median of {runs} runs for ResNet-18, {runs if args.quick else args.digits_runs} "
          "for the digits CNN, after 2 warm-up runs, round-robin)\n")
    print(machine_line(args.threads) + "\n")
    rows = []

    # --quick: no FastNAS search on ResNet-18 (the AutoNAS min subnet exercises the same path), one digits budget
    resnet = torchvision.models.resnet18(weights=None).eval()
    fastnas = {} if args.quick else _fastnas_subnets(resnet, budgets, (2, 3, 64, 64), torch.zeros(1, 3, 64, 64))
    autonas = _autonas_subnets(resnet)
    if args.quick:
        autonas = {"min": autonas["min"]}
    x = torch.randn(args.batch, 3, size, size)
    rows += _table(f"resnet18 {args.batch}x3x{size}x{size}", _variants(resnet, fastnas, autonas), x, runs)

    digits = DigitsResNet().eval()
    digits_budgets = args.digits_budgets.split(",")
    fastnas = _fastnas_subnets(digits, digits_budgets[:1] if args.quick else digits_budgets,
                               (16 if args.quick else 64, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    digits_batch = 32 if args.quick else args.digits_batch
    x = torch.rand(digits_batch, 1, 8, 8)
    rows += _table(f"digits CNN {digits_batch}x1x8x8", _variants(digits, fastnas, {}), x,
                   runs if args.quick else args.digits_runs)

    headers = ["model", "variant", "FLOPs", "params", "latency ms", "CPU ms", "latency ratio", "spread"]
    print(markdown_table(headers, rows, align="ll" + "r" * 6))
    print("\nFLOPs/params relative to the original; latency ratio = median / original's median; spread = "
          "(max - min) / median of the wall times. '@ subnet' = converted model with the subnet selected.")
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("exported_speed.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
