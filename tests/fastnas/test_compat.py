"""ModelOpt's FastNAS names: the descriptor alias, convert/restore functions, the patch manager, and the
searcher attributes a ModelOpt script reads."""

from __future__ import annotations

import copy

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import get_search_space, select
from modeopt_fastnas import (
    BinarySearcher,
    FastNASMode,
    FastNASModeDescriptor,
    FastNASPatchManager,
    convert_fastnas_searchspace,
    prune,
    restore_fastnas_searchspace,
)

from ._models import INPUT_SHAPE, WidthScore, batches, tiny_cnn


def test_descriptor_alias_is_the_mode() -> None:
    assert FastNASModeDescriptor is FastNASMode
    assert mo.get_mode("fastnas").name == FastNASModeDescriptor().name


def test_convert_and_restore_functions_rebuild_the_same_space() -> None:
    model, metadata = convert_fastnas_searchspace(tiny_cnn(), {"nn.Conv2d": {"channel_divisor": 4}})
    space = get_search_space(model)
    assert mo.applied_modes(model) == []  # like ModelOpt's function: the mode is not recorded
    assert space.get_hparam("conv1.out_channels").choices[:2] == (2, 4)  # divisor 4, halved for 8 steps
    fresh = restore_fastnas_searchspace(tiny_cnn(), {"nn.Conv2d": {"channel_divisor": 4}}, metadata)
    again = get_search_space(fresh)
    assert {n: hp.choices for n, hp in again.named_hparams()} == {n: hp.choices for n, hp in space.named_hparams()}


def _bn_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_patch_manager_recalibrates_at_the_first_eval_forward_after_a_selection() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    data = batches(10)
    manager = FastNASPatchManager(model, data).patch()
    assert manager.is_patched and get_search_space(model).driver is manager
    x = torch.randn(*INPUT_SHAPE)
    model.eval()
    model(x)  # the first eval forward re-estimates (nothing was calibrated yet)
    select(model, {"conv1.out_channels": 8, "conv2.out_channels": 16, "conv3.out_channels": 32})
    before = _bn_stats(model)
    y = model(x)
    reference = copy.deepcopy(model)
    manager_stats = _bn_stats(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, manager_stats))
    mo.recalibrate_batchnorm(reference, mo.make_forward_loop(data))
    assert all(torch.equal(a, b) for a, b in zip(manager_stats, _bn_stats(reference)))
    model(x)  # same subnet: no second re-estimation
    assert all(torch.equal(a, b) for a, b in zip(manager_stats, _bn_stats(model)))
    assert torch.equal(model(x), y)
    manager.unpatch()
    assert not manager.is_patched and get_search_space(model).driver is None and model._forward_pre_hooks == {}


def test_patch_manager_refuses_too_little_data() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    FastNASPatchManager(model, batches(2)).patch()
    model.eval()
    with pytest.raises(mo.CalibrationError, match="only 2 batch"):
        model(torch.randn(*INPUT_SHAPE))


def test_prune_pauses_the_patch_manager_and_exposes_modelopt_attributes() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    manager = FastNASPatchManager(model, batches(10)).patch()
    calls: list[int] = []
    original = manager.prep_for_eval

    def counting() -> int:
        calls.append(1)
        return original()

    manager.prep_for_eval = counting  # type: ignore[method-assign]
    score = WidthScore({"conv1.out_channels": lambda w: (16 - w) * 0.5, "conv2.out_channels": lambda w: (32 - w) * 0.1})
    searcher = BinarySearcher()
    searcher.search(model, {"flops": "70%"}, torch.randn(*INPUT_SHAPE), {"score_func": score, "verbose": False})
    assert calls == []  # the searcher's forwards never triggered the manager
    assert searcher.original_score == 100.0
    assert set(searcher.sensitivity_map) == {"conv1.out_channels", "conv2.out_channels", "conv3.out_channels"}
    drops = searcher.sensitivity_map["conv1.out_channels"]
    assert list(drops.values()) == sorted(drops.values(), reverse=True) and drops[16] == 0.0


def test_prune_accepts_the_modelopt_call_shape() -> None:
    model, results = prune(tiny_cnn(), {"flops": "60%"}, torch.randn(*INPUT_SHAPE),
                           {"score_func": WidthScore({}), "verbose": False})
    assert results["flops_ratio"] <= 0.6
    assert get_search_space(model).config() == results["subnet"]  # not exported: still the search space
