"""Search-space conversion time: ``apply_mode(model, [mode])`` on torchvision models (random weights).

For each model and mode (``autonas``, ``fastnas``) prints the median of ``--runs`` conversions of a
fresh copy (after one warm-up conversion), the median time to rebuild the same space from the saved
mode state (``restore_from_modeopt_state``: no re-analysis), the number of searchable hparams and the
number of subnets. Copying the model is not timed.

    .venv/bin/python bench/convert_time.py [--runs 3] [--models resnet18,resnet50,mobilenet_v2,vit_b_16]
                                           [--modes autonas,fastnas] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import warnings

import torch
import torchvision
from _common import add_common_args, machine_line, markdown_table, measure, reproduce_line, set_threads
from torch import nn

import modeopt_core as mo
from modeopt_autonas import get_search_space

_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")


def _space_size(model: nn.Module) -> str:
    size = get_search_space(model).size()
    return f"{size:,}" if size < 10**6 else f"1e{math.log10(size):.1f}"


def _bench(name: str, mode: str, template: nn.Module, runs: int) -> list[str]:
    copies = [copy.deepcopy(template) for _ in range(runs + 1)]  # one per conversion; copying is untimed
    converted: list[nn.Module] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert = measure(lambda: converted.append(mo.apply_mode(copies.pop(), [mode])), runs, warmup=1)
    state = mo.modeopt_state(converted[-1])
    fresh = [copy.deepcopy(template) for _ in range(runs + 1)]
    restore = measure(lambda: mo.restore_from_modeopt_state(fresh.pop(), state), runs, warmup=1)
    hparams = sum(1 for _ in get_search_space(converted[-1]).named_hparams(True))
    params = sum(p.numel() for p in template.parameters())
    return [
        name,
        f"{params / 1e6:.1f}M",
        mode,
        f"{1e3 * convert.median:.0f}",
        f"{1e3 * convert.best:.0f}",
        f"{1e3 * restore.median:.0f}",
        str(hparams),
        _space_size(converted[-1]),
        str(len(caught)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--models", default=",".join(_MODELS), help="comma-separated torchvision model names")
    parser.add_argument("--modes", default="autonas,fastnas", help="comma-separated NAS modes")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    models = ["resnet18", "mobilenet_v2"] if args.quick else args.models.split(",")
    runs = 1 if args.quick else args.runs
    print(f"# Search-space conversion time (median of {runs} after 1 warm-up)\n")
    print(machine_line(args.threads) + "\n")
    rows = []
    for name in models:
        template = getattr(torchvision.models, name)(weights=None)
        for mode in args.modes.split(","):
            rows.append(_bench(name, mode, template, runs))
    headers = ["model", "params", "mode", "convert ms (median)", "convert ms (min)", "restore ms (median)",
               "hparams", "subnets", "warnings"]
    print(markdown_table(headers, rows, align="lrl" + "r" * 6))
    print("\nconvert = apply_mode on a fresh copy (fx analysis + dynamic modules); restore = "
          "restore_from_modeopt_state from the saved state (no analysis).")
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("convert_time.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
