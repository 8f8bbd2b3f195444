"""End to end on real data: the digits CNN trained, pruned to 50% and 30% FLOPs, exported, fine-tuned,
saved and restored (scikit-learn's digits, validation accuracy as the score)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import modeopt_core as mo
from modeopt_core.checkpoint import restore, save
from modeopt_fastnas import prune
from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders, train_epochs

DUMMY = torch.zeros(1, 1, 8, 8)
_log = logging.getLogger(__name__)


def _flops(model: torch.nn.Module) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(DUMMY)
    return int(counter.get_total_flops())


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    return digits_loaders(seed=0)


@pytest.fixture(scope="module")
def baseline(loaders: tuple[DataLoader, DataLoader]) -> tuple[DigitsResNet, float]:
    torch.manual_seed(0)
    model = DigitsResNet()
    train_epochs(model, loaders[0], epochs=8)
    return model, accuracy(model, loaders[1])


def _config(loaders: tuple[DataLoader, DataLoader], checkpoint: Path) -> dict[str, Any]:
    val = loaders[1]
    score: Callable[[torch.nn.Module], float] = lambda m: accuracy(m, val)  # noqa: E731
    return {"score_func": score, "data_loader": loaders[0], "max_iter_data_loader": 8,
            "checkpoint": str(checkpoint), "verbose": False}


@pytest.fixture(scope="module")
def half(baseline: tuple[DigitsResNet, float], loaders: tuple[DataLoader, DataLoader],
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The baseline pruned to 50% FLOPs (search checkpoint kept for the 30% run)."""
    ckpt = tmp_path_factory.mktemp("fastnas") / "digits-search.ckpt"
    start = time.perf_counter()
    model, res = prune(copy.deepcopy(baseline[0]), {"flops": "50%"}, DUMMY, _config(loaders, ckpt))
    return {"model": model, "results": res, "checkpoint": ckpt, "search_s": time.perf_counter() - start}


def test_prune_to_half_flops_finetune_export_save_restore(
    baseline: tuple[DigitsResNet, float], loaders: tuple[DataLoader, DataLoader], half: dict[str, Any],
    tmp_path: Path,
) -> None:
    train, val = loaders
    base_model, base_acc = baseline
    res, model = half["results"], half["model"]
    assert res["satisfied"] and res["flops_ratio"] <= 0.50
    assert res["bn_recalibrated"] and res["calibration_batches"] == 8
    pruned_acc = accuracy(model, val)
    assert pruned_acc >= base_acc - 5.0  # BN statistics fit the subnet (the reference returns 10-32% here)

    model = mo.export(model)
    assert mo.applied_modes(model) == ["fastnas", "export_nas"]
    assert _flops(model) == res["flops"]["after"] <= 0.5 * _flops(base_model)
    assert sum(p.numel() for p in model.parameters()) == res["params"]["after"]
    torch.manual_seed(0)
    train_epochs(model, train, epochs=3, lr=0.01)
    tuned_acc = accuracy(model, val)
    assert tuned_acc >= base_acc - 1.0

    path = tmp_path / "digits-pruned.safetensors"
    save(model, path)
    fresh = restore(DigitsResNet(), path)
    x = next(iter(val))[0]
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert accuracy(fresh, val) == tuned_acc

    figures = {
        "baseline_acc": base_acc, "pruned_acc": pruned_acc, "finetuned_acc": tuned_acc,
        "flops_before": res["flops"]["before"], "flops_after": res["flops"]["after"],
        "params_before": res["params"]["before"], "params_after": res["params"]["after"],
        "search_s": half["search_s"], "sensitivity_s": res["timings"]["sensitivity_s"],
        "score_evals": res["num_score_evals"], "subnet": res["subnet"],
    }
    _log.info("digits 50%% FLOPs: %s", figures)  # shown with -o log_cli=true --log-cli-level=INFO


def test_thirty_percent_is_reachable_with_defaults_reusing_the_map(
    baseline: tuple[DigitsResNet, float], loaders: tuple[DataLoader, DataLoader], half: dict[str, Any],
) -> None:
    model, res = prune(copy.deepcopy(baseline[0]), {"flops": "30%"}, DUMMY, _config(loaders, half["checkpoint"]))
    assert res["resumed"] and res["num_score_evals"] == 0  # the 50% run's map, no new evaluation
    assert res["satisfied"] and res["flops_ratio"] <= 0.30
    assert res["sensitivity_map"] == half["results"]["sensitivity_map"]
    acc = accuracy(model, loaders[1])
    assert acc > 50.0  # far above chance (10%) straight out of the search
    _log.info("digits 30%% FLOPs: accuracy %.2f%% straight out of the search, FLOPs %d (%.3f), params %d (%.3f)",
              acc, res["flops"]["after"], res["flops_ratio"], res["params"]["after"], res["params_ratio"])
