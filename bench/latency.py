"""Latency-aware FastNAS: prune to a measured latency budget, and to the same FLOPs budget for contrast.

For ResNet-18 (1x3x224x224) and the digits CNN (256x1x8x8), random weights, data-free output-agreement
score (``modeopt_fastnas.OutputAgreement``), on the CPU at ``--threads`` threads:

* the latency table (``modeopt_autonas.space.LatencyModel``): time to build it into an empty cache and
  to build it again from that cache, its size, the calibration error, widths slower than a wider one;
* FastNAS to ``{"latency": B}`` and to ``{"flops": B}`` (the second reuses the first's sensitivity
  map): FLOPs kept, predicted latency, measured latency of the exported model (median of ``--runs``
  runs, the original and both exports timed round-robin, independently of the search's own measured
  check), measured / original, prediction error; the search's check (measurements, refits);
* with ``--plots DIR`` (needs matplotlib): predicted vs measured latency of every subnet the latency
  search visited, one PNG per model.

    .venv/bin/python bench/latency.py [--budget 60%] [--runs 20] [--threads 2] [--models resnet18,digits]
                                      [--plots DIR] [--cache DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import functools
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from _common import add_common_args, machine_line, markdown_table, reproduce_line, set_threads
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_core as mo
from modeopt_autonas.space import LatencyModel, get_search_space
from modeopt_core.sdk import time_interleaved
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from modeopt_fastnas.digits import DigitsResNet
from modeopt_fastnas.plots import have_matplotlib, plot_latency

TARGET_RATIO = 0.63  # measured latency / original at a 60% latency budget
TARGET_ERROR = 0.10  # |predicted - measured| / measured
TARGET_REUSE = 0.10  # second build / first build


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _table_times(template: nn.Module, dummy: torch.Tensor, options: dict[str, Any]) -> dict[str, Any]:
    """Build the latency table into an empty cache, then again from it."""
    space = get_search_space(mo.apply_mode(copy.deepcopy(template), ["fastnas"]))
    start = time.perf_counter()
    first = LatencyModel.build(space, dummy, **options)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    second = LatencyModel.build(space, dummy, **options)
    reuse_s = time.perf_counter() - start
    assert second.stats["measured"] == 0, "the second build should find everything in the cache"
    return {"model": second, "build_s": build_s, "reuse_s": reuse_s, "stats": first.stats,
            "slow": len(first.slow_widths()), "calibration_error": first.calibration["max_abs_error"],
            "examples": _worst_slow(first)}


def _worst_slow(model: LatencyModel, count: int = 2) -> list[str]:
    slow = sorted(model.slow_widths(), key=lambda s: -s["ms"] / s["wider_ms"])[:count]
    return [f"{s['layers'][0]} {s['widths']} {s['ms']:.3f} ms > {s['wider']} {s['wider_ms']:.3f} ms" for s in slow]


def _run(name: str, template: nn.Module, dummy: torch.Tensor, score_shape: tuple[int, ...], budget: str,
         runs: int, options: dict[str, Any], plots: Path | None) -> tuple[list[list[str]], list[str], list[str]]:
    template = template.eval()
    table = _table_times(template, dummy, options)
    score = OutputAgreement(template, random_inputs(score_shape, num_batches=1, seed=0))
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"original": template}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(Path(tmp) / "search.ckpt")
        failed = ""
        for kind in ("latency", "flops"):
            config = {"score_func": score, "verbose": False, "checkpoint": checkpoint, "latency_options": options,
                      "latency_report": "visited" if kind == "latency" and plots is not None else "final"}
            start = time.perf_counter()
            try:
                model, res = prune(copy.deepcopy(template), {kind: budget}, dummy, config)
            except mo.ConstraintError as exc:  # a table measured under heavy load can make the budget look unreachable
                failed = f"{name}: the latency search failed: {exc}"
                continue
            res["search_s"] = time.perf_counter() - start
            results[kind] = res
            models[f"{kind} {budget}"] = mo.export(model).eval()
    latency = table["model"]
    fns = {label: functools.partial(m, dummy) for label, m in models.items()}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = time_interleaved(fns, runs, warmup=3)
    original_cfg = {n: hp.original for n, hp in get_search_space(
        mo.apply_mode(copy.deepcopy(template), ["fastnas"])).named_hparams(True)}
    # the latency search's own prediction of its result (under the line its measured check kept); the
    # table model's for the FLOPs search, which has none
    predicted = {"original": latency.latency(original_cfg),
                 **{f"{k} {budget}": results[k]["latency"]["after"] if "latency" in results[k]
                    else latency.latency(results[k]["subnet"]) for k in results}}
    base_ms, base_flops = timings["original"].median_ms, _flops(template, dummy)
    rows = []
    for label, model in models.items():
        measured = timings[label].median_ms
        predicted_ratio, measured_ratio = predicted[label] / predicted["original"], measured / base_ms
        rows.append([
            name, label, f"{100 * _flops(model, dummy) / base_flops:.1f}%", f"{predicted[label]:.2f}",
            f"{measured:.2f}", f"{measured_ratio:.3f}", f"{timings[label].ratio_to(timings['original']):.3f}",
            f"{100 * (predicted[label] - measured) / measured:+.1f}%",
            f"{predicted_ratio:.3f}", f"{100 * (predicted_ratio - measured_ratio) / measured_ratio:+.1f}%",
            f"{100 * timings[label].spread:.0f}%",
        ])
    stats = table["stats"]
    table_row = [
        name, str(stats["units"]), f"{stats['variants']} ({stats['groups']} groups)", f"{table['build_s']:.1f}",
        f"{table['reuse_s']:.2f}", f"{100 * table['reuse_s'] / table['build_s']:.1f}%",
        f"{100 * table['calibration_error']:.1f}%", str(table["slow"]),
    ]
    if failed:
        return rows, [table_row], [failed]
    lat_label = f"latency {budget}"
    ratio = timings[lat_label].median_ms / base_ms
    paired = timings[lat_label].ratio_to(timings["original"])
    error = (predicted[lat_label] - timings[lat_label].median_ms) / timings[lat_label].median_ms
    ratio_error = (predicted[lat_label] / predicted["original"] - ratio) / ratio
    reuse = table["reuse_s"] / table["build_s"]
    verdicts = [
        f"{name}: latency {budget} -> measured ratio {ratio:.3f} (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}; paired ratio {paired:.3f}), prediction error "
        f"{100 * error:+.1f}% (target within {100 * TARGET_ERROR:.0f}%: {'met' if abs(error) <= TARGET_ERROR else 'MISSED'}"
        f"; of the ratio to the original {100 * ratio_error:+.1f}%: {'met' if abs(ratio_error) <= TARGET_ERROR else 'MISSED'}), table reuse "
        f"{100 * reuse:.1f}% of the build (target <= {100 * TARGET_REUSE:.0f}%: "
        f"{'met' if reuse <= TARGET_REUSE else 'MISSED'}); search {results['latency']['search_s']:.1f} s, "
        f"slower widths skipped: {sum(len(v) for v in results['latency']['latency']['slower_widths_skipped'].values())}",
        *(f"  slow width example: {e}" for e in table["examples"]),
    ]
    check = results["latency"]["latency"].get("verification")
    if check:
        verdicts.append(
            f"  the search's own check: {len(check['rounds'])} measurement(s), {check['refits']} refit(s); "
            "predicted -> measured ratio per round: " + ", ".join(
                f"{r['predicted_ratio']:.3f} -> {r['measured_ratio']:.3f}" for r in check["rounds"])
            + f"; budget {'met' if check['met'] else 'NOT met'} as measured")
    if plots is not None:
        visited = results["latency"]["latency"].get("visited", [])
        points = [{**p, "label": str(i + 1)} for i, p in enumerate(visited)]
        points += [{"predicted": predicted[k], "measured": timings[k].median_ms, "label": k} for k in models]
        plots.mkdir(parents=True, exist_ok=True)
        path = plot_latency(points, plots / f"latency-{name.split()[0]}.png",
                            title=f"{name}: predicted vs measured (numbers: binary-search steps)")
        verdicts.append(f"  plot: {path}")
    return rows, [table_row], verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=20)
    parser.add_argument("--budget", default="60%", help="latency and FLOPs budget (default 60%%)")
    parser.add_argument("--models", default="resnet18,digits", help="comma-separated: resnet18, digits")
    parser.add_argument("--plots", type=Path, default=None, help="folder for predicted-vs-measured plots")
    parser.add_argument("--cache", type=Path, default=None,
                        help="latency cache folder (default: a fresh temporary one, so the build is timed from empty)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    if args.plots is not None and not have_matplotlib():
        print("matplotlib is not installed: no plots")
        args.plots = None
    quick = args.quick
    runs = 3 if quick else args.runs
    print(f"# Latency-aware FastNAS ({args.budget} latency vs {args.budget} FLOPs; medians of {runs} interleaved runs)\n")
    print(machine_line(args.threads) + "\n")
    rows: list[list[str]] = []
    table_rows: list[list[str]] = []
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        options: dict[str, Any] = {"cache_dir": str(cache)}
        if quick:
            options.update(runs=2, warmup=1, calibration_runs=3, report_runs=3)
        wanted = args.models.split(",")
        if "resnet18" in wanted:
            size = 64 if quick else 224
            r = _run(f"resnet18 1x3x{size}x{size}", torchvision.models.resnet18(weights=None),
                     torch.randn(1, 3, size, size), (2, 3, 32 if quick else 64, 32 if quick else 64), args.budget,
                     runs, options, args.plots)
            rows += r[0]
            table_rows += r[1]
            verdicts += r[2]
        if "digits" in wanted:
            batch = 32 if quick else 256
            r = _run(f"digits CNN {batch}x1x8x8", DigitsResNet(), torch.rand(batch, 1, 8, 8), (64, 1, 8, 8),
                     args.budget, runs, options, args.plots)
            rows += r[0]
            table_rows += r[1]
            verdicts += r[2]
    print("## Latency table\n")
    print(markdown_table(["model", "layer calls", "widths timed", "build s (empty cache)", "reuse s",
                          "reuse / build", "calibration max error", "widths slower than a wider one"],
                         table_rows, align="l" + "r" * 7))
    print("\n## Pruned models (exported), timed round-robin with the original\n")
    print(markdown_table(["model", "variant", "FLOPs", "predicted ms", "measured ms", "measured / original",
                          "paired ratio", "prediction error", "predicted / original", "ratio error", "spread"], rows,
                         align="ll" + "r" * 9))
    print("\nprediction error = (predicted - measured) / measured; ratio error: the same for the ratios to the "
          "original (a machine that gets slower or faster between calibration and timing moves the first, not "
          "the second); paired ratio: the interquartile mean of the per-round ratios to the original (what the "
          "search's check and calibration use); spread = (max - min) / median of the timed runs")
    print("\n".join(verdicts))
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("latency.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
