"""End to end on real data: supernet training, search under 60% FLOPs, export, fine-tune, save, restore.

Run with ``-s`` to see the measured figures (accuracies, search time per iteration).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_core.checkpoint import restore, save
from modeopt_core.constraints import ForwardProfiler
from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders, train_epochs

DUMMY = torch.zeros(1, 1, 8, 8)


def _pipeline(tmp_path: Path, widths: tuple[int, int, int], epochs: int, num_iters: int, **search: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    train, val = digits_loaders(batch_size=64, seed=0)
    model = mo.apply_mode(DigitsResNet(widths), [("autonas", {"sampling": "sandwich", "seed": 0})])
    original = ForwardProfiler(model, DUMMY).flops()
    figures: dict[str, Any] = {}

    train_epochs(model, train, epochs)  # the lead's ordinary training loop, unchanged
    calib = list(itertools.islice(train, 8))
    for name in ("max", "min"):
        mtn.sample(model, name)
        mtn.recalibrate_bn(model, calib)
        figures[f"supernet_{name}_acc"] = accuracy(model, val)
    mtn.sample(model, "max")

    start = time.perf_counter()
    model, result = mo.search(
        model,
        {"flops": "60%"},
        DUMMY,
        {"score_func": lambda m: accuracy(m, val), "data_loader": calib, "num_iters": num_iters, "verbose": False, **search},
    )
    figures["search_s_per_iter"] = (time.perf_counter() - start) / num_iters
    figures["search_best_acc"] = result["best"]["score"]
    assert accuracy(model, val) == result["best"]["score"]  # returned with the chosen subnet's statistics

    exported = mo.export(model)
    figures["exported_flops_ratio"] = ForwardProfiler(exported, DUMMY).flops() / original
    figures["exported_acc"] = accuracy(exported, val)
    train_epochs(exported, train, 1, lr=0.01)
    figures["finetuned_acc"] = accuracy(exported, val)

    save(exported, tmp_path / "digits.safetensors")
    torch.manual_seed(123)
    restored = restore(DigitsResNet(widths), tmp_path / "digits.safetensors")
    exported.eval()
    restored.eval()
    for x, _ in val:
        assert torch.equal(restored(x), exported(x))
    assert mo.applied_modes(restored) == ["autonas", "export_nas"]
    print("\ndigits AutoNAS figures:", {k: round(v, 4) for k, v in figures.items()})
    return figures


def test_digits_autonas_end_to_end(tmp_path: Path) -> None:
    figures = _pipeline(tmp_path, (16, 32, 64), epochs=3, num_iters=8, population_size=4, candidate_size=2)
    assert figures["exported_flops_ratio"] <= 0.6
    assert figures["supernet_max_acc"] > 80 and figures["supernet_min_acc"] > 60  # chance is 10%
    assert figures["exported_acc"] == figures["search_best_acc"]
    assert figures["finetuned_acc"] > 85


@pytest.mark.slow
def test_digits_autonas_end_to_end_full_size(tmp_path: Path) -> None:
    figures = _pipeline(tmp_path, (32, 64, 128), epochs=10, num_iters=60, population_size=15, candidate_size=5)
    assert figures["exported_flops_ratio"] <= 0.6
    assert figures["exported_acc"] == figures["search_best_acc"] > 90
    assert figures["finetuned_acc"] > 95
