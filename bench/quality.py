"""Accuracy of the digits CNN pruned by FastNAS to 50% and 30% FLOPs, after a fixed 5-epoch fine-tune.

The baseline is trained for ``--epochs`` (cached, see ``_common.digits_baseline``). FastNAS scores
candidates by accuracy on a fixed 384-sample slice of the *training* set (so the validation accuracy
reported here was not used to choose the subnet), re-estimating BN statistics from the first 8
training batches (fixed order) before every evaluation; one sensitivity map serves all budgets (search checkpoint). Each
pruned model is exported and fine-tuned for ``--finetune-epochs`` (SGD, cosine, lr 0.01); the
baseline fine-tuned the same way is the control row. Fine-tuning is repeated with ``--seeds`` seeds
(median and range shown). Accuracy is on the 449-sample validation split.

    .venv/bin/python bench/quality.py [--budgets 50%,30%] [--epochs 5] [--finetune-epochs 5] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    add_common_args,
    digits_baseline,
    fmt_count,
    machine_line,
    markdown_table,
    reproduce_line,
    set_threads,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeopt_core as mo
from modeopt_core.constraints import ForwardProfiler
from modeopt_fastnas import prune
from modeopt_fastnas.digits import accuracy, digits_loaders, train_epochs

_SCORE_SAMPLES = 384
_CALIBRATION_BATCHES = 8
_FINETUNE_LR = 0.01


def _counts(model: nn.Module) -> tuple[int, int]:
    counts = ForwardProfiler(model, torch.zeros(1, 1, 8, 8)).measure(("flops", "params"))
    return int(counts["flops"]), int(counts["params"])


def _finetune(model: nn.Module, train: DataLoader, val: DataLoader, epochs: int, seeds: int) -> tuple[str, float]:
    """Fine-tune copies of ``model`` with seeds 0..seeds-1; return "median (min-max)" val accuracy and seconds/run."""
    accs, seconds = [], []
    for seed in range(seeds):
        copy_ = copy.deepcopy(model)
        torch.manual_seed(seed)
        start = time.perf_counter()
        train_epochs(copy_, train, epochs, lr=_FINETUNE_LR)
        seconds.append(time.perf_counter() - start)
        accs.append(accuracy(copy_, val))
    text = f"{statistics.median(accs):.2f}" + (f" ({min(accs):.2f}-{max(accs):.2f})" if seeds > 1 else "")
    return text, statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=1)
    parser.add_argument("--budgets", default="50%,30%", help="FLOPs budgets (default 50%%,30%%)")
    parser.add_argument("--epochs", type=int, default=5, help="baseline training epochs (default 5)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="fine-tune epochs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="baseline seed")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tune runs (seeds 0..N-1) per model (default 3)")
    parser.add_argument("--no-control", action="store_true", help="skip fine-tuning the unpruned baseline")
    parser.add_argument("--cache", default=None, help="digits baseline cache folder")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    widths = (8, 16, 16) if args.quick else (32, 64, 128)
    epochs, ft_epochs = (1, 1) if args.quick else (args.epochs, args.finetune_epochs)
    budgets = args.budgets.split(",")[:1] if args.quick else args.budgets.split(",")
    print(f"# Digits CNN quality after FastNAS + {ft_epochs}-epoch fine-tune\n")
    print(machine_line(args.threads) + "\n")

    train, val = digits_loaders(seed=0)
    x, y = train.dataset.tensors  # type: ignore[attr-defined]
    score_loader = DataLoader(TensorDataset(x[:_SCORE_SAMPLES], y[:_SCORE_SAMPLES]), batch_size=256)
    # fixed calibration batches (the shuffling train loader would make the search depend on what ran before)
    calib_loader = DataLoader(TensorDataset(x, y), batch_size=train.batch_size)
    baseline, train_s = digits_baseline(epochs, seed=args.seed, cache=args.cache, widths=widths)
    base_acc = accuracy(baseline, val)
    base_flops, base_params = _counts(baseline)
    rows = [["baseline", "100%", fmt_count(base_flops), fmt_count(base_params), "-", f"{base_acc:.2f}", "-", "-"]]
    seeds = 1 if args.quick else args.seeds
    if not args.no_control:
        acc, ft_s = _finetune(baseline, train, val, ft_epochs, seeds)
        rows.append(["baseline + fine-tune", "100%", fmt_count(base_flops), fmt_count(base_params), "-", "-",
                     acc, f"{ft_s:.1f}"])

    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            model, res = prune(copy.deepcopy(baseline), {"flops": budget}, torch.zeros(1, 1, 8, 8), {
                "score_func": lambda m: accuracy(m, score_loader),
                "data_loader": calib_loader,
                "max_iter_data_loader": _CALIBRATION_BATCHES,
                "bn_calibration": "final" if args.quick else "each",
                "checkpoint": str(Path(tmp) / "search.ckpt"),
                "verbose": False,
            })
            model = mo.export(model)
            pruned_acc = accuracy(model, val)
            flops, params = _counts(model)
            acc, ft_s = _finetune(model, train, val, ft_epochs, seeds)
            rows.append([
                f"FastNAS {budget}" + (" (map reused)" if res["resumed"] else ""),
                f"{100 * flops / base_flops:.1f}%", fmt_count(flops), f"{fmt_count(params)} "
                f"({100 * params / base_params:.0f}%)", f"{res['num_score_evals']}", f"{pruned_acc:.2f}",
                acc, f"{ft_s:.1f}",
            ])
    print(markdown_table(["model", "FLOPs kept", "FLOPs", "params", "score evals", "val acc before fine-tune",
                          f"val acc after {ft_epochs}-epoch fine-tune", "fine-tune s / run"], rows))
    trained = "loaded from the cache" if train_s is None else f"trained in {train_s:.0f} s"
    print(f"\nbaseline: DigitsResNet{widths}, {epochs} epochs (seed {args.seed}), {trained}. 'before fine-tune' (pruned rows) = exported "
          "subnet with BN re-estimated, before fine-tuning. FLOPs by torch.utils.flop_counter (1x1x8x8). "
          f"Fine-tuned {seeds}x (seeds 0..{seeds - 1}): median (min-max) val accuracy; 1 sample = "
          f"{100 / len(val.dataset):.2f} points.")
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("quality.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
