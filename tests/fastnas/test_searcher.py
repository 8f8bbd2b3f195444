"""BinarySearcher on a real converted CNN: evaluation order, map, bisection, constraints, BN, output, resume."""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_autonas.space.profile import SubnetProfiler
from modeopt_core.calibration import CalibrationError, recalibrate_batchnorm
from modeopt_fastnas import prune
from tests.fastnas._models import INPUT_SHAPE, WidthScore, batches, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)
C1, C2, C3 = "conv1.out_channels", "conv2.out_channels", "conv3.out_channels"
NON_MONOTONE_C3 = {8: 10.0, 16: 2.0, 24: 6.0}


def _score() -> WidthScore:
    return WidthScore({
        C1: lambda w: float(16 - w),  # never ~0 below the max: every choice is evaluated
        C2: lambda w: 5.0 if w < 16 else 0.0,  # ~0 from 16 up: 20, 24, 28 are skipped
        C3: lambda w: NON_MONOTONE_C3.get(w, 0.0),  # 24 hurts more than 16: made monotone
    })


def _converted(config: dict[str, Any] | None = None) -> torch.nn.Module:
    return mo.apply_mode(tiny_cnn(), [("fastnas", config or {})])


def test_sensitivities_are_visited_smallest_first_once_each_and_stop_at_zero_drop() -> None:
    score = _score()
    _model, res = prune(_converted(), {"flops": "60%"}, DUMMY, {"score_func": score, "verbose": False})
    full = {C1: 16, C2: 32, C3: 64}
    expected = [full]
    expected += [{**full, C1: w} for w in (2, 4, 6, 8, 10, 12, 14)]
    expected += [{**full, C2: w} for w in (4, 8, 12, 16)]
    expected += [{**full, C3: w} for w in (8, 16, 24, 32)]
    assert score.calls == expected
    assert res["num_score_evals"] == len(expected) == 16
    assert res["sensitivity_raw"][C2] == [[4, 5.0], [8, 5.0], [12, 5.0], [16, 0.0], [20, None], [24, None],
                                          [28, None], [32, None]]
    smap = res["sensitivity_map"]
    assert smap[C1] == {w: float(16 - w) for w in range(2, 17, 2)}
    assert smap[C3] == {8: 10.0, 16: 6.0, 24: 6.0, 32: 0.0, 40: 0.0, 48: 0.0, 56: 0.0, 64: 0.0}
    assert res["original_score"] == 100.0


def _worst_drop(smap: dict[str, dict[int, float]], subnet: dict[str, int]) -> float:
    return max(smap[n][subnet[n]] for n in smap)


@pytest.mark.parametrize("constraints", [{"flops": "60%"}, {"params": "45%"}, {"flops": "70%", "params": "40%"}])
def test_the_chosen_subnet_meets_the_budget_with_the_least_worst_case_drop(constraints: dict[str, str]) -> None:
    model, res = prune(_converted(), constraints, DUMMY, {"score_func": _score(), "verbose": False})
    space = get_search_space(model)
    counter = SubnetProfiler(space, DUMMY)
    limits = res["constraints"]["limits"]
    subnet = space.config()
    assert res["subnet"] == subnet and res["satisfied"]
    assert res["flops"]["after"] == counter.flops() and res["params"]["after"] == counter.params()
    assert all(res[name]["after"] <= limit for name, limit in limits.items())
    # brute force over all 512 subnets: no subnet meeting the budget has a smaller worst single-layer drop
    smap = res["sensitivity_map"]
    best = min(
        _worst_drop(smap, cand)
        for values in itertools.product(*(space.get_hparam(n).choices for n in (C1, C2, C3)))
        if all(getattr(counter, k)(cand := dict(zip((C1, C2, C3), values))) <= v for k, v in limits.items())
    )
    assert _worst_drop(smap, subnet) == best == res["threshold"]


def test_flops_and_params_together_both_bind() -> None:
    _, flops_only = prune(_converted(), {"flops": "70%"}, DUMMY, {"score_func": _score(), "verbose": False})
    _, both = prune(_converted(), {"flops": "70%", "params": "40%"}, DUMMY, {"score_func": _score(), "verbose": False})
    assert flops_only["params_ratio"] > 0.40  # so the params limit below is not implied by the FLOPs one
    assert both["params_ratio"] <= 0.40 and both["flops_ratio"] <= 0.70


def test_binary_search_costs_no_model_run_and_few_steps() -> None:
    runs = []
    model = _converted()
    model.register_forward_pre_hook(lambda *a: runs.append(1))
    score = _score()
    _, res = prune(model, {"flops": "50%"}, DUMMY, {"score_func": score, "verbose": False})
    assert runs == [1]  # the analytic profiler's single measuring pass; WidthScore never runs the model
    assert res["iterations"] <= 6 and res["stopped_early"]  # bisection over <= 22 distinct keys
    visited = res["thresholds_visited"]
    assert len(visited) == res["iterations"] and visited[0]["satisfied"]
    assert res["timings"]["binary_search_s"] < 1.0


def test_an_unreachable_budget_fails_before_any_evaluation_and_leaves_the_model_alone() -> None:
    model = _converted()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    score = _score()
    with pytest.raises(mo.ConstraintError, match=r"flops <= \S+ \(1\.0%\) cannot be met: the smallest subnet .* has "
                                                 r"flops \S+ \(\d+\.\d%\) and params \S+ \(\d+\.\d%\)"):
        prune(model, {"flops": "1%"}, DUMMY, {"score_func": score, "verbose": False})
    assert score.calls == []
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert get_search_space(model).config() == {C1: 16, C2: 32, C3: 64}


def test_a_budget_and_a_score_are_required() -> None:
    with pytest.raises(mo.ConstraintError, match="needs a budget"):
        prune(_converted(), {}, DUMMY, {"score_func": _score()})
    with pytest.raises(mo.ConfigError, match="score_func"):
        prune(_converted(), {"flops": "50%"}, DUMMY, {})
    with pytest.raises(mo.ConfigError, match="bn_calibration='each' needs calibration data"):
        prune(_converted(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "bn_calibration": "each"})
    with pytest.raises(mo.ConfigError, match="bn_calibration"):
        prune(_converted(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "bn_calibration": "sometimes"})


def test_non_width_hparams_stay_at_their_max_and_are_not_scored() -> None:
    model = _converted({"nn.Conv2d": {"kernel_size": [1, 3]}})
    names = [n for n, _ in get_search_space(model).named_hparams(True)]
    assert "conv2.kernel_size" in names
    score = _score()
    model, res = prune(model, {"flops": "60%"}, DUMMY, {"score_func": score, "verbose": False})
    assert res["pruned_hparams"] == [C1, C2, C3]
    assert all(call[n] == 3 for call in score.calls for n in call if n.endswith("kernel_size"))
    assert res["subnet"]["conv2.kernel_size"] == 3


def _counting_loop(data: list[Any], calls: list[int]) -> Any:
    def loop(model: torch.nn.Module) -> None:
        calls.append(1)
        for x, _ in data:
            model(x)

    return loop


def test_bn_is_recalibrated_before_each_evaluation_and_for_the_result_never_for_constraints() -> None:
    calls: list[int] = []
    data = batches(10)
    score = _score()
    model, res = prune(_converted(), {"flops": "50%"}, DUMMY,
                       {"score_func": score, "forward_loop": _counting_loop(data, calls), "verbose": False})
    # one per evaluation (two are importance="auto"'s probes), one to rank channels by their activations,
    # one for the returned subnet
    assert res["importance_probe"] is not None and len(calls) == res["num_score_evals"] + 2
    assert res["bn_recalibrated"] and res["calibration_batches"] == 10
    stats = model.bn2.running_mean.clone(), model.bn2.running_var.clone()
    assert stats[0].numel() == res["subnet"][C2]
    recalibrate_batchnorm(model, _counting_loop(data, []))
    assert torch.allclose(model.bn2.running_mean, stats[0]) and torch.allclose(model.bn2.running_var, stats[1])


def test_final_only_calibration_and_off() -> None:
    calls: list[int] = []
    _, res = prune(_converted(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "verbose": False,
                   "forward_loop": _counting_loop(batches(8), calls), "bn_calibration": "final"})
    assert len(calls) == 2 and res["bn_recalibrated"]  # the activation ranking's pass, the returned subnet
    model = _converted()
    before = model.bn1.running_var.clone()
    model, res = prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "verbose": False,
                       "data_loader": batches(8), "bn_calibration": "off"})
    assert not res["bn_recalibrated"]
    assert torch.isin(model.bn1.running_var, before).all()  # reordered channels, statistics untouched


def test_too_little_calibration_data_is_an_error_naming_the_batch_count_and_the_model_is_restored() -> None:
    model = _converted()
    x = torch.randn(4, *INPUT_SHAPE[1:])
    model.eval()
    before = model(x)
    with pytest.raises(CalibrationError, match=r"only 3 batch\(es\), fewer than min_batches=8"):
        prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "data_loader": batches(3), "verbose": False})
    model.eval()
    assert torch.allclose(model(x), before, atol=1e-5)
    _, res = prune(_converted(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "data_loader": batches(3),
                   "min_calibration_batches": 3, "verbose": False})
    assert res["calibration_batches"] == 3


def test_verbose_false_prints_and_logs_nothing(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    model = _converted()
    capfd.readouterr()
    caplog.set_level(logging.INFO)
    prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "data_loader": batches(8), "verbose": False})
    assert capfd.readouterr() == ("", "")
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_verbose_reports_progress_with_the_current_layer_and_drop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    prune(_converted(), {"flops": "50%"}, DUMMY, {"score_func": _score()})
    lines = [r.getMessage() for r in caplog.records if r.name == "modeopt_core.progress"]
    assert lines[0] == "FastNAS sensitivity: started (21 choice)"
    assert "21/21 choice (100%)" in lines[-1] and "conv3.out_channels=32/64 drop=0" in lines[-1]


def test_a_checkpointed_map_is_reused_for_another_budget_without_scoring(tmp_path: Any) -> None:
    ckpt = tmp_path / "search.ckpt"
    first_score = _score()
    _, first = prune(_converted(), {"flops": "60%"}, DUMMY,
                     {"score_func": first_score, "checkpoint": str(ckpt), "verbose": False})
    assert ckpt.exists() and not first["resumed"]
    again = _score()
    _, second = prune(_converted(), {"flops": "40%"}, DUMMY,
                      {"score_func": again, "checkpoint": str(ckpt), "verbose": False})
    assert again.calls == [] and second["resumed"] and second["num_score_evals"] == 0
    assert second["num_score_evals_total"] == first["num_score_evals"]
    _, fresh = prune(_converted(), {"flops": "40%"}, DUMMY, {"score_func": _score(), "verbose": False})
    assert second["subnet"] == fresh["subnet"] and second["sensitivity_map"] == fresh["sensitivity_map"]
    with pytest.raises(mo.CheckpointError, match="search_space"):
        prune(_converted({"nn.Conv2d": {"min_width_steps": 4}}), {"flops": "40%"}, DUMMY,
              {"score_func": _score(), "checkpoint": str(ckpt), "verbose": False})


def _dead_channels() -> torch.nn.Module:
    """tiny_cnn whose two conv1 channels with the largest weights never fire (BN shift below the ReLU)."""
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[:2] *= 10
        model.bn1.bias[:2] = -1e4
    return model


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_activation_importance_prunes_dead_channels_first(importance: str) -> None:
    from modeopt_fastnas import LossScore

    data = batches(8, seed=2)
    _, res = prune(mo.apply_mode(_dead_channels(), ["fastnas"]), {"flops": "70%"}, torch.zeros(INPUT_SHAPE), {
        "score_func": LossScore(batches(2, seed=9)), "data_loader": data, "bn_calibration": "off",
        "importance": importance, "verbose": False})
    drop = res["sensitivity_map"]["conv1.out_channels"][14]
    if importance == "activation":
        assert abs(drop) < 1e-6  # the two channels left out are the dead ones: nothing changes
    else:
        assert drop > 1e-3  # the weight norms keep the dead channels and drop live ones


def test_activation_importance_needs_data() -> None:
    model = tiny_cnn()
    with pytest.raises(mo.ConfigError, match="importance='activation' ranks channels on calibration data"):
        prune(model, {"flops": "50%"}, torch.zeros(INPUT_SHAPE), {"score_func": WidthScore({}), "importance": "activation"})
    with pytest.raises(mo.ConfigError, match="importance='gradient' is invalid"):
        prune(model, {"flops": "50%"}, torch.zeros(INPUT_SHAPE), {"score_func": WidthScore({}), "importance": "gradient"})
    assert mo.applied_modes(model) == []


def test_data_free_activation_importance_uses_the_scores_batches() -> None:
    from modeopt_fastnas import OutputAgreement, random_inputs

    model = _dead_channels()
    x = random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=1)
    _, res = prune(mo.apply_mode(model, ["fastnas"]), {"flops": "70%"}, torch.zeros(INPUT_SHAPE), {
        "score_func": OutputAgreement(_dead_channels(), x), "importance": "activation", "verbose": False})
    assert abs(res["sensitivity_map"]["conv1.out_channels"][14]) < 1e-6


@pytest.mark.parametrize("importance", ["weight", "contribution"])
def test_contribution_importance_ranks_channels_a_batchnorm_mutes_last(importance: str) -> None:
    from modeopt_fastnas import OutputAgreement, random_inputs

    model = tiny_cnn()
    with torch.no_grad():  # the largest conv1 filters, scaled to nothing by bn1: they never contribute
        model.conv1.weight[:2] *= 10
        model.bn1.weight[:2] = 0.0
        model.bn1.bias[:2] = 0.0
    x = random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=1)
    _, res = prune(mo.apply_mode(model, ["fastnas"]), {"flops": "70%"}, torch.zeros(INPUT_SHAPE), {
        "score_func": OutputAgreement(copy.deepcopy(model).eval(), x), "importance": importance, "verbose": False})
    drop = res["sensitivity_map"]["conv1.out_channels"][14]
    if importance == "contribution":
        assert abs(drop) < 1e-6  # the two channels left out are the muted ones, found without data
    else:
        assert drop > 1e-3  # the weight norms keep the muted channels and drop live ones
