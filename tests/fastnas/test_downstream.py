"""Downstream-only evaluations are exact: the same sensitivity map and subnet as full evaluations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_core import make_forward_loop, recalibrate_batchnorm
from modeopt_fastnas import AccuracyScore, LossScore, OutputAgreement, prune, random_inputs
from modeopt_fastnas.digits import DigitsResNet
from modeopt_fastnas.downstream import DownstreamEvaluator, ReplayError
from tests.fastnas._models import INPUT_SHAPE, batches, tiny_cnn


class Tricky(nn.Module):
    """In-place activations shared by several calls, a long skip (concat of an early activation), a
    functional op between modules and an unused branch: what a general model does that a Sequential doesn't."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)  # one module, called four times
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.a = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.c = nn.Sequential(nn.Conv2d(24, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.act(self.stem(x))
        y = self.act(self.a(early))
        y = y + 0.5 * self.act(self.b(y))  # residual with an in-place activation on a branch
        y = torch.cat([y, early], dim=1)  # the early activation is used again late
        y = self.act(self.c(y))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _calibrated(model: nn.Module, shape: tuple[int, ...] = INPUT_SHAPE) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape[1:]))
    return model.eval()


def _labelled(n: int, shape: tuple[int, ...], classes: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape[1:], generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _search(model: nn.Module, score: Any, cap: float, bn: str, shape: tuple[int, ...], budget: str = "50%"
            ) -> dict[str, Any]:
    config = {"score_func": score, "data_loader": _labelled(48, shape, 4, seed=3), "max_iter_data_loader": 6, "min_calibration_batches": 4,
              "bn_calibration": bn, "verbose": False, "downstream_cache_mb": cap, "zero_drop_tol": 0.0}
    _, res = prune(copy.deepcopy(model), {"flops": budget}, torch.zeros(shape), config)
    return res


def _assert_same(full: dict[str, Any], fast: dict[str, Any]) -> None:
    assert full["sensitivity_raw"].keys() == fast["sensitivity_raw"].keys()
    for name, raw in full["sensitivity_raw"].items():
        other = fast["sensitivity_raw"][name]
        assert [c for c, _ in raw] == [c for c, _ in other]
        for (_, a), (_, b) in zip(raw, other):
            assert (a is None) == (b is None), name
            if a is not None:
                assert b == pytest.approx(a, abs=1e-9), name
    assert fast["subnet"] == full["subnet"]
    assert fast["num_score_evals"] == full["num_score_evals"]


@pytest.mark.parametrize("bn", ["each", "off"])
def test_tricky_model_map_and_subnet_equal_full_evaluations(bn: str) -> None:
    model = _calibrated(Tricky())
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=1))
    full = _search(model, score, 0, bn, INPUT_SHAPE)
    fast = _search(model, score, 256, bn, INPUT_SHAPE)
    assert "downstream_recorded_groups" not in full["timings"]
    assert fast["timings"]["downstream_recorded_groups"] == len(fast["pruned_hparams"])
    assert fast["timings"]["downstream_fallback_groups"] == 0
    _assert_same(full, fast)


def test_residual_cnn_with_accuracy_and_loss_scores_equal_full_evaluations() -> None:
    shape = (1, 1, 8, 8)
    model = _calibrated(DigitsResNet((8, 16, 16), num_classes=4), shape)
    for score in (AccuracyScore(_labelled(40, shape, 4, seed=9)), LossScore(_labelled(40, shape, 4, seed=9))):
        _assert_same(_search(model, score, 0, "each", shape), _search(model, score, 256, "each", shape))


def test_a_cap_too_small_for_any_record_falls_back_to_full_evaluations_with_the_same_result() -> None:
    model = _calibrated(Tricky())
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=1))
    tiny = _search(model, score, 1e-4, "each", INPUT_SHAPE)  # 100 bytes: only empty records (the stem's) fit
    timings = tiny["timings"]
    assert timings["downstream_fallback_groups"] >= len(tiny["pruned_hparams"]) - 1 >= 1
    assert timings["downstream_recorded_groups"] + timings["downstream_fallback_groups"] == len(tiny["pruned_hparams"])
    _assert_same(_search(model, score, 0, "each", INPUT_SHAPE), tiny)


def test_a_plain_score_function_keeps_full_evaluations() -> None:
    model = _calibrated(Tricky())
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=1))
    res = _search(model, lambda m: score(m), 256, "each", INPUT_SHAPE)
    assert "downstream_recorded_groups" not in res["timings"]
    _assert_same(_search(model, score, 0, "each", INPUT_SHAPE), res)


def _evaluator(model: nn.Module, score: Any, calib: list[torch.Tensor], cap: float = 64
               ) -> tuple[DownstreamEvaluator, Any]:
    model = mo.apply_mode(model, ["fastnas"])
    space = get_search_space(model)
    recalibrate_batchnorm(model, make_forward_loop(calib), min_batches=1)
    evaluator = DownstreamEvaluator(space, score, calib, cache_mb=cap)
    evaluator.set_reference()
    return evaluator, space


def test_records_skip_the_upstream_part_and_hold_only_the_maximal_finished_calls() -> None:
    model = _calibrated(tiny_cnn())
    calib = [x for x, _ in batches(3)]
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=2))
    evaluator, space = _evaluator(model, score, calib)
    hp = space.get_hparam("conv3.out_channels")
    assert evaluator.begin(hp)
    record = evaluator._record
    assert record is not None
    recorded = [[type(c.module).__name__ for c in calls] for calls in record.calls["score"]]
    # conv1, bn1, conv2, bn2 finish before conv3 (the group's producer) starts; conv2 reads bn1's output
    assert recorded == [["DynamicConv2d", "DynamicBatchNorm2d", "DynamicConv2d", "DynamicBatchNorm2d"]] * 2
    assert record.prefix_bns == {model.bn1, model.bn2}
    ran: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: ran.append(n)) for n, m in model.named_modules() if n]
    space.select({"conv3.out_channels": hp.choices[0]}, strict=False)
    evaluator.evaluate()
    for h in hooks:
        h.remove()
    # the short-circuited calls are still called (their forward returns the record), nothing inside them runs
    assert set(ran) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc"}


def test_a_forward_that_does_not_repeat_its_calls_raises_replay_error() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Identity()
            self.mid, self.bn, self.out = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
            self.use_extra = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.use_extra:  # state outside the data: the upstream calls change between passes
                x = self.extra(x)
            return self.out(F.relu(self.bn(self.mid(x)))).mean((2, 3))

    model = _calibrated(Flaky())
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=2))
    evaluator, space = _evaluator(model, score, [x for x, _ in batches(1)])
    hp = space.get_hparam("mid.out_channels")
    assert evaluator.begin(hp)
    space.select({hp.name: hp.choices[0]}, strict=False)
    evaluator.evaluate()
    model.use_extra = False
    with pytest.raises(ReplayError, match="did not repeat the recorded module calls"):
        evaluator.evaluate()


def test_a_bound_weight_read_outside_its_module_ends_the_prefix() -> None:
    class Peek(nn.Module):
        """Scales its input by a statistic of another module's (width-dependent) weight."""

        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            self._conv = [conv]  # a plain reference: not a submodule

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (1 + self._conv[0].weight.abs().mean())

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Identity()
            self.early = nn.Conv2d(3, 8, 1, bias=False)
            self.peek = Peek(self.early)
            self.bn = nn.BatchNorm2d(8)
            self.post = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.peek(self.pre(x))  # reads early.weight before early runs
            return self.post(F.relu(self.bn(self.early(x)))).mean((2, 3))

    model = mo.apply_mode(_calibrated(Tied()), [("fastnas", {"leaf_modules": ["peek"]})])
    space = get_search_space(model)
    calib = [x for x, _ in batches(2)]
    score = OutputAgreement(model, random_inputs((4, *INPUT_SHAPE[1:]), num_batches=1, seed=2))
    loop = make_forward_loop(calib)
    recalibrate_batchnorm(model, loop, min_batches=1)
    evaluator = DownstreamEvaluator(space, score, calib)
    evaluator.set_reference()
    hp = space.get_hparam("early.out_channels")
    assert evaluator.begin(hp)
    record = evaluator._record
    assert record is not None
    # `pre` finishes before the read of early.weight inside `peek`; `peek` itself is not recorded
    assert [c.module for c in record.calls["score"][0]] == [model.pre]
    for choice in hp.choices[:-1]:
        space.select({hp.name: choice}, strict=False)
        fast = evaluator.evaluate()
        recalibrate_batchnorm(model, loop, min_batches=1)
        assert fast == pytest.approx(score(model), abs=1e-12)


def test_the_map_calibrates_on_an_evenly_spaced_share_and_the_returned_model_on_every_batch() -> None:
    model = _calibrated(tiny_cnn())
    loader = _labelled(48, INPUT_SHAPE, 4, seed=3)  # 6 batches of 8
    score = LossScore(_labelled(32, INPUT_SHAPE, 4, seed=5))
    config = {"score_func": score, "data_loader": loader, "max_iter_data_loader": 6, "min_calibration_batches": 4,
              "bn_calibration": "each", "verbose": False, "zero_drop_tol": 0.0, "map_calibration_samples": 16}
    pruned, res = prune(copy.deepcopy(model), {"flops": "50%"}, torch.zeros(INPUT_SHAPE), config)
    # 16 samples are 2 batches, min_calibration_batches raises that to 4: batches 0, 1, 3, 4 of 6
    assert res["map_calibration_batches"] == 4 and res["calibration_batches"] == 6
    drawn = list(loader)
    share = make_forward_loop([drawn[i] for i in (0, 1, 3, 4)])
    space = get_search_space(pruned)
    widest = {n: hp.max for n, hp in space.named_hparams(True)}

    def scored(subnet: dict[str, int]) -> float:
        space.select(subnet, strict=False)
        recalibrate_batchnorm(pruned, share, min_batches=4, strict=True)
        return float(score(pruned))

    original = scored(widest)
    assert res["original_score"] == pytest.approx(original, abs=1e-6)
    checked = 0
    for name, raw in res["sensitivity_raw"].items():
        for choice, drop in raw[:2]:
            if drop is not None:  # the entry, measured by hand on the share
                assert drop == pytest.approx(original - scored({**widest, name: choice}), abs=1e-6), (name, choice)
                checked += 1
    assert checked >= 3
    # the same search on every batch measures another map; the share agrees with full evaluations
    _, every = prune(copy.deepcopy(model), {"flops": "50%"}, torch.zeros(INPUT_SHAPE),
                     {**config, "map_calibration_samples": 0})
    assert every["map_calibration_batches"] == 6 and every["sensitivity_raw"] != res["sensitivity_raw"]
    _, full = prune(copy.deepcopy(model), {"flops": "50%"}, torch.zeros(INPUT_SHAPE),
                    {**config, "downstream_cache_mb": 0})
    _assert_same(full, res)


def test_the_share_counts_samples_of_tensor_dict_and_tuple_inputs() -> None:
    from modeopt_fastnas.map_builder import _num_samples

    assert _num_samples(torch.zeros(5, 3)) == 5
    assert _num_samples({"attention_mask": None, "input_ids": torch.zeros(7, 4, dtype=torch.long)}) == 7
    assert _num_samples((torch.tensor(1.0), [torch.zeros(3, 2)])) == 3
    assert _num_samples("text") is None and _num_samples(torch.tensor(2.0)) is None
