"""Distillation after pruning: the digits CNN pruned to 30% FLOPs by FastNAS, then ``--finetune-epochs``
epochs of ``kd_loss`` from the unpruned model versus the same epochs of plain fine-tuning.

The recipe of ``modeopt demo``: DigitsResNet trained ``--epochs`` epochs (SGD 0.05, cosine), pruned by
FastNAS (score = accuracy on the validation set, BN statistics from 8 fixed training batches),
exported, then fine-tuned with SGD 0.01 + cosine. Both arms start from the same pruned weights with
the same seed, data order and optimiser settings; the distilled arm only changes the loss to
``model.compute_kd_loss(student_loss=cross_entropy)`` with the demo's distillation config.

Splits (``modeopt_fastnas.digits.digits_splits``): train 1079 / validation 269 / test 449 images.
The baseline trains on train, FastNAS and ``--tune`` look at validation only (``--tune`` picks the
temperature and loss weights of lowest validation cross entropy), and the figures are test
accuracy. Each seed trains its own baseline and prunes it; the median over ``--seeds`` seeds is
reported. One thread unless ``--threads`` (as the demo).

    .venv/bin/python bench/distill_digits.py [--seeds 3] [--flops 30%] [--tune] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import add_common_args, machine_line, markdown_table, reproduce_line, set_threads
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeopt_core as mo
from modeopt_core.constraints import ForwardProfiler
from modeopt_fastnas import prune
from modeopt_fastnas.demo import DISTILL_CONFIG
from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_splits, train_epochs

_CALIBRATION_BATCHES = 8
_BATCH = 64
_FINETUNE_LR = 0.01
#: --tune: temperatures x (weight of the cross entropy, weight of the KL term); all on the validation set
_GRID_T = (1.0, 2.0, 4.0, 8.0)
_GRID_W = ((0.5, 0.5), (0.1, 0.9), (0.0, 1.0))  # weights sum to 1: the step size stays the plain fine-tune's


def _loader(data: TensorDataset, seed: int, shuffle: bool = True) -> DataLoader:
    return DataLoader(data, batch_size=_BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def _flops(model: nn.Module) -> int:
    return int(ForwardProfiler(model, torch.zeros(1, 1, 8, 8)).measure(("flops",))["flops"])


def _pruned(seed: int, train: TensorDataset, val: TensorDataset, widths: tuple[int, int, int], epochs: int,
            flops: str, quick: bool = False) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(unpruned baseline, pruned and exported copy, figures) for one seed."""
    torch.manual_seed(seed)
    baseline = DigitsResNet(widths)
    start = time.perf_counter()
    train_epochs(baseline, _loader(train, seed), epochs)
    train_s = time.perf_counter() - start
    val_loader = DataLoader(val, batch_size=256)
    start = time.perf_counter()
    model, _ = prune(copy.deepcopy(baseline), {"flops": flops}, torch.zeros(1, 1, 8, 8), {
        "score_func": lambda m: accuracy(m, val_loader),
        "data_loader": _loader(train, 0, shuffle=False),  # fixed calibration batches
        "max_iter_data_loader": _CALIBRATION_BATCHES,
        **({"bn_calibration": "final", "min_calibration_batches": 1} if quick else {}),
        "verbose": False,
    })
    prune_s = time.perf_counter() - start
    model = mo.export(model)
    return baseline.eval(), model, {"train_s": train_s, "prune_s": prune_s,
                                    "flops_kept": _flops(model) / _flops(baseline)}


def _finetune(pruned: nn.Module, teacher: nn.Module | None, config: dict[str, Any] | None, train: TensorDataset,
              seed: int, epochs: int) -> tuple[nn.Module, float]:
    """A fine-tuned copy of ``pruned`` (distilled from ``teacher`` with ``config`` when given) and its seconds."""
    student = copy.deepcopy(pruned)
    loss_fn = None
    if teacher is not None:
        student = mo.apply_mode(student, [("kd_loss", config)], mode_kwargs={"teacher": teacher})
        kd = student.compute_kd_loss
        loss_fn = lambda out, y: kd(student_loss=F.cross_entropy(out, y))  # noqa: E731
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_epochs(student, _loader(train, seed), epochs, lr=_FINETUNE_LR, loss_fn=loss_fn)
    seconds = time.perf_counter() - start
    if teacher is not None:
        student = mo.export(student)  # export_student: the plain pruned student again
    return student, seconds


def _config(temperature: float, ce_weight: float, kd_weight: float) -> dict[str, Any]:
    return {"temperature": temperature, "student_loss_weight": ce_weight, "pairs": [{"weight": kd_weight}]}


def _describe(config: dict[str, Any]) -> str:
    pairs = config.get("pairs", [{}])
    return (f"T={config.get('temperature', 1.0):g}, cross-entropy weight {config.get('student_loss_weight', 1.0):g}, "
            f"KL weight {pairs[0].get('weight', 1.0):g}")


class _Arms:
    """Fine-tuned models per (config, seed), trained once: the tuning grid and the report share them."""

    def __init__(self, runs: list[dict[str, Any]], train: TensorDataset, epochs: int) -> None:
        self.runs, self.train, self.epochs = runs, train, epochs
        self.done: dict[str, list[tuple[nn.Module, float]]] = {}

    def get(self, config: dict[str, Any] | None) -> list[tuple[nn.Module, float]]:
        """``(model, seconds)`` per seed: plain fine-tuning for ``None``, else distillation with ``config``."""
        key = json.dumps(config, sort_keys=True)
        if key not in self.done:
            self.done[key] = [
                _finetune(r["pruned"], None if config is None else r["teacher"], config, self.train, r["seed"],
                          self.epochs)
                for r in self.runs
            ]
        return self.done[key]


@torch.no_grad()
def _nll(model: nn.Module, loader: DataLoader) -> float:
    """Mean cross entropy of ``model`` (eval mode) over ``loader``."""
    model.eval()
    total = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in loader)
    return total / len(loader.dataset)  # type: ignore[arg-type]


def _tune(arms: _Arms, val: TensorDataset) -> dict[str, Any]:
    """The grid on the validation set; returns the config of the lowest median validation cross entropy.

    Cross entropy rather than accuracy: a few validation images are wrong after any fine-tune, so
    accuracy ties across most of the grid and cannot tell the settings apart.
    """
    val_loader = DataLoader(val, batch_size=256)

    def measure(config: dict[str, Any] | None) -> tuple[float, float]:
        models = [m for m, _ in arms.get(config)]
        return (statistics.median(_nll(m, val_loader) for m in models),
                statistics.median(accuracy(m, val_loader) for m in models))

    plain_nll, plain_acc = measure(None)
    rows, best, best_nll = [["plain fine-tune", "1", "-", f"{plain_nll:.4f}", f"{plain_acc:.2f}"]], None, float("inf")
    for t in _GRID_T:
        for ce, kd in _GRID_W:
            config = _config(t, ce, kd)
            nll, acc = measure(config)
            print(f"  tuning: {_describe(config)}: val cross entropy {nll:.4f}, accuracy {acc:.2f} (plain "
                  f"{plain_nll:.4f}, {plain_acc:.2f})", file=sys.stderr, flush=True)
            rows.append([f"kd_loss T={t:g}", f"{ce:g}", f"{kd:g}", f"{nll:.4f}", f"{acc:.2f}"])
            if nll < best_nll:
                best, best_nll = config, nll
    print(f"## Tuning on the validation set ({len(val)} images, median over the seeds)\n")
    print(markdown_table(["fine-tune", "CE weight", "KL weight", "val cross entropy", "val acc"], rows))
    assert best is not None
    print(f"\nchosen on validation (lowest cross entropy): {_describe(best)}\n")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, each with its own baseline (default 3)")
    parser.add_argument("--flops", default="30%", help="FastNAS FLOPs budget (default 30%%)")
    parser.add_argument("--epochs", type=int, default=8, help="baseline training epochs (default 8, the demo's)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="epochs of each fine-tune arm (default 5)")
    parser.add_argument("--tune", action="store_true",
                        help=f"choose temperature and loss weights on the validation set ({len(_GRID_T) * len(_GRID_W)} "
                             "settings) instead of using the demo's config")
    parser.set_defaults(threads=1)  # the demo's: these 8x8 convolutions gain little from more, a shared CPU loses a lot
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quick = args.quick
    widths = (8, 16, 16) if quick else (32, 64, 128)
    seeds = 1 if quick else args.seeds
    epochs, ft_epochs = (1, 1) if quick else (args.epochs, args.finetune_epochs)
    print(f"# Digits CNN: FastNAS to {args.flops} FLOPs, then {ft_epochs} epochs of kd_loss vs plain fine-tuning\n")
    print(machine_line(args.threads) + "\n")

    train, val, test = digits_splits()
    if quick:  # a few batches: the smoke test checks the pipeline, not the figures
        train, val = (TensorDataset(*(t[:n] for t in d.tensors)) for d, n in ((train, 256), (val, 128)))
    test_loader = DataLoader(test, batch_size=256)
    runs = []
    for seed in range(seeds):
        teacher, pruned, figures = _pruned(seed, train, val, widths, epochs, args.flops, quick)
        runs.append({"seed": seed, "teacher": teacher, "pruned": pruned, **figures})
        print(f"  seed {seed}: baseline trained in {figures['train_s']:.0f} s, pruned in {figures['prune_s']:.0f} s",
              file=sys.stderr, flush=True)
    arms = _Arms(runs, train, ft_epochs)
    config = _tune(arms, val) if args.tune and not quick else dict(DISTILL_CONFIG)

    rows, plain_accs, kd_accs = [], [], []
    times: dict[str, list[float]] = {"plain": [], "kd": []}
    nlls: dict[str, list[float]] = {"plain": [], "kd": []}
    for r, (plain, plain_s), (distilled, kd_s) in zip(runs, arms.get(None), arms.get(config)):
        accs = [accuracy(m, test_loader) for m in (r["teacher"], r["pruned"], plain, distilled)]
        plain_accs.append(accs[2])
        kd_accs.append(accs[3])
        nlls["plain"].append(_nll(plain, test_loader))
        nlls["kd"].append(_nll(distilled, test_loader))
        times["plain"].append(plain_s)
        times["kd"].append(kd_s)
        rows.append([str(r["seed"]), f"{100 * r['flops_kept']:.1f}%", *(f"{a:.2f}" for a in accs),
                     f"{accs[3] - accs[2]:+.2f}", f"{plain_s:.1f} / {kd_s:.1f}"])
    plain_med, kd_med = statistics.median(plain_accs), statistics.median(kd_accs)
    image = 100.0 / len(test)
    rows.append(["median", "", "", "", f"{plain_med:.2f}", f"{kd_med:.2f}", f"{kd_med - plain_med:+.2f}", ""])
    print(markdown_table(["seed", "FLOPs kept", "baseline", "pruned", f"fine-tune {ft_epochs} ep",
                          f"kd_loss {ft_epochs} ep", "kd - fine-tune", "s plain / kd"], rows))
    print(f"\ntest accuracy (%) on {len(test)} images (1 image = {image:.2f} points); distillation config: "
          f"{json.dumps(config)} ({_describe(config)})")
    print(f"median of {seeds} seed(s): fine-tune {plain_med:.2f}%, kd_loss {kd_med:.2f}%, difference "
          f"{kd_med - plain_med:+.2f} points ({(kd_med - plain_med) / image:+.1f} images); test cross entropy "
          f"{statistics.median(nlls['plain']):.4f} vs {statistics.median(nlls['kd']):.4f}; per run "
          f"{statistics.median(times['plain']):.1f} s plain vs {statistics.median(times['kd']):.1f} s distilled")
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("distill_digits.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
