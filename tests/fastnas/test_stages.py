"""``prune(..., stages=N)``: geometric budgets, a new map per stage, a chain that restores, failure safety."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import get_search_space, has_search_space
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from modeopt_fastnas._stages import keep_width_steps, stage_limits, width_steps
from tests.fastnas._models import INPUT_SHAPE, TinyCNN, batches, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)


def _agreement(model: torch.nn.Module) -> OutputAgreement:
    """Agreement with the *original* model's outputs: every stage is scored against the same reference."""
    return OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=5))


def _config(score: Any, **extra: Any) -> dict[str, Any]:
    return {"score_func": score, "data_loader": batches(8), "verbose": False, **extra}


C3 = "conv3.out_channels"


def test_a_later_stage_keeps_the_first_stages_width_steps() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    first = get_search_space(model)
    steps = width_steps(first)
    assert sorted(steps.values()) == [2, 4, 8]  # 16, 32 and 64 wide, adaptive divisor
    first.select({**first.config(), C3: 48})
    second = get_search_space(mo.apply_mode(mo.export(model), ["fastnas"]))
    hp = dict(second.named_hparams(True))[C3]
    assert hp.original == 48 and 44 in hp.choices  # 48 wide: the adaptive divisor halves to 4
    assert width_steps(second) != steps
    keep_width_steps(second, steps)
    assert hp.choices == (8, 16, 24, 32, 40, 48)
    assert width_steps(second) == steps


@given(
    fraction=st.floats(min_value=0.01, max_value=1.0),
    reference=st.floats(min_value=1.0, max_value=1e12),
    stages=st.integers(min_value=1, max_value=6),
)
def test_stage_limits_fall_geometrically_to_the_limit_itself(fraction: float, reference: float, stages: int) -> None:
    limit = fraction * reference
    steps = stage_limits({"flops": limit}, {"flops": reference}, stages)
    assert len(steps) == stages and steps[-1] == {"flops": limit}
    values = [reference, *(s["flops"] for s in steps)]
    assert all(a >= b * (1 - 1e-12) for a, b in itertools.pairwise(values))
    for k, step in enumerate(steps[:-1], start=1):  # equal ratios between consecutive stages
        assert step["flops"] == pytest.approx(reference * fraction ** (k / stages), rel=1e-9)


def test_two_stages_meet_the_budget_of_the_original_with_a_map_per_stage() -> None:
    model = tiny_cnn()
    score = _agreement(model)
    pruned, res = prune(model, {"flops": "30%"}, DUMMY, _config(score), stages=2)
    assert mo.applied_modes(pruned) == ["fastnas", "export_nas", "fastnas"] and has_search_space(pruned)
    original_flops = mo.ForwardProfiler(tiny_cnn(), DUMMY).flops()
    assert res["flops"]["before"] == pytest.approx(original_flops)
    assert res["flops_ratio"] <= 0.30 + 1e-9
    assert res["flops"]["after"] == pytest.approx(mo.ForwardProfiler(pruned, DUMMY).flops())
    first, second = res["stages"]
    assert first["limits"]["flops"] == pytest.approx(math.sqrt(0.30) * original_flops)
    assert 0.30 < first["flops_ratio"] <= math.sqrt(0.30) + 1e-9
    # the second map starts from the first stage's result: its score is that model's, below the original's
    assert second["original_score"] < first["original_score"]
    assert res["original_score"] == first["original_score"]
    assert res["num_score_evals"] == first["num_score_evals"] + second["num_score_evals"] > 0
    assert all(s["seconds"] > 0 for s in res["stages"])
    # the second stage measured and chose only multiples of the first stage's width steps
    steps = width_steps(get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"])))
    assert width_steps(get_search_space(pruned)) == steps


def test_a_staged_result_saves_restores_and_exports_like_any_chain(tmp_path: Path) -> None:
    model = tiny_cnn()
    pruned, _ = prune(model, {"flops": "40%", "params": "60%"}, DUMMY, _config(_agreement(model)), stages=3)
    assert mo.applied_modes(pruned) == ["fastnas", "export_nas"] * 2 + ["fastnas"]
    path = tmp_path / "pruned.safetensors"
    mo.save(pruned, path)
    back = mo.restore(TinyCNN(), path)
    x = torch.randn(4, *INPUT_SHAPE[1:])
    assert torch.equal(back.eval()(x), pruned.eval()(x))
    plain = mo.export(back)
    assert not has_search_space(plain) and torch.equal(plain(x), pruned(x))


def test_each_stage_resumes_from_its_own_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "search.ckpt"
    first, res1 = prune(tiny_cnn(), {"flops": "35%"}, DUMMY, _config(_agreement(tiny_cnn()), checkpoint=str(ckpt)),
                        stages=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.stage1-of-2.ckpt", "search.stage2-of-2.ckpt"]
    calls = []

    class Counting(OutputAgreement):
        def __call__(self, model: torch.nn.Module) -> float:
            calls.append(1)
            return super().__call__(model)

    again = Counting(tiny_cnn(), random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=5))
    second, res2 = prune(tiny_cnn(), {"flops": "35%"}, DUMMY, _config(again, checkpoint=str(ckpt)), stages=2)
    assert res2["subnet"] == res1["subnet"] and [s["limits"] for s in res2["stages"]] == [
        s["limits"] for s in res1["stages"]]
    x = torch.randn(4, *INPUT_SHAPE[1:])
    assert torch.equal(first.eval()(x), second.eval()(x))
    assert res2["num_score_evals"] < res1["num_score_evals"]  # the maps came from the checkpoints
    assert res2["num_score_evals_total"] == res1["num_score_evals_total"] == res1["num_score_evals"]


@pytest.mark.parametrize("stages", [0, -1, 1.5, "2", True])
def test_stages_must_be_a_positive_int(stages: Any) -> None:
    model = tiny_cnn()
    with pytest.raises(mo.ArgumentError, match="'stages' must be an int >= 1"):
        prune(model, {"flops": "50%"}, DUMMY, _config(_agreement(model)), stages=stages)
    assert mo.applied_modes(model) == []


def test_a_latency_budget_is_refused_in_stages_before_anything_runs() -> None:
    model = tiny_cnn()
    with pytest.raises(mo.ConstraintError, match="use stages=1 with a latency limit"):
        prune(model, {"flops": "50%", "latency": "60%"}, DUMMY, _config(_agreement(model)), stages=2)
    assert mo.applied_modes(model) == [] and not has_search_space(model)


def test_a_failure_in_a_later_stage_leaves_the_model_bit_for_bit_as_it_was() -> None:
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    inner = _agreement(tiny_cnn())
    seen: list[float] = []

    def score(m: torch.nn.Module) -> float:
        if len(seen) > 0 and mo.applied_modes(m)[:2] == ["fastnas", "export_nas"]:
            raise RuntimeError("the evaluation server went away")  # the second stage's first evaluation
        seen.append(inner(m))
        return seen[-1]

    with pytest.raises(RuntimeError, match="went away"):
        prune(model, {"flops": "30%"}, DUMMY, _config(score), stages=2)
    assert seen  # the first stage ran (and sorted channels, re-estimated BN) before the failure
    assert mo.applied_modes(model) == [] and not has_search_space(model)
    assert {n: type(m) for n, m in model.named_modules()} == types
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
