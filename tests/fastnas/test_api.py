"""``prune`` convenience and the data-free ``OutputAgreement`` score."""

from __future__ import annotations

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import get_search_space, has_search_space
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from tests.fastnas._models import INPUT_SHAPE, WidthScore, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)


def _score() -> WidthScore:
    return WidthScore({"conv2.out_channels": lambda w: (32 - w) / 4})


def test_prune_converts_searches_and_returns_the_model_at_the_chosen_subnet() -> None:
    model, res = prune(tiny_cnn(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "verbose": False})
    assert mo.applied_modes(model) == ["fastnas"] and has_search_space(model)
    assert get_search_space(model).config() == res["subnet"]
    for key in ("sensitivity_map", "subnet", "flops", "params", "num_score_evals", "timings", "thresholds_visited",
                "original_score", "threshold"):
        assert key in res
    assert res["flops"]["after"] <= 0.5 * res["flops"]["before"]


def test_prune_reuses_an_existing_fastnas_conversion_and_takes_a_mode_config() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    model, _ = prune(model, {"flops": "60%"}, DUMMY, {"score_func": _score(), "verbose": False})
    assert mo.applied_modes(model) == ["fastnas"]
    model, _res = prune(tiny_cnn(), {"flops": "60%"}, DUMMY, {"score_func": _score(), "verbose": False},
                       mode_config={"nn.Conv2d": {"channels_ratio": [0.5, 1.0]}})
    assert get_search_space(model).get_hparam("conv2.out_channels").choices == (16, 32)


def test_prune_validates_before_converting() -> None:
    model = tiny_cnn()
    with pytest.raises(mo.ConfigError, match="unknown search config key"):
        prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "num_iter": 3})
    with pytest.raises(mo.ConstraintError, match="energy"):
        prune(model, {"energy": 3}, DUMMY, {"score_func": _score()})
    with pytest.raises(mo.ConstraintError, match="latency"):
        prune(model, {"latency": "fast"}, DUMMY, {"score_func": _score()})
    assert mo.applied_modes(model) == [] and not has_search_space(model)


def test_output_agreement_is_one_for_the_same_function_and_drops_when_it_changes() -> None:
    model = tiny_cnn()
    model.train()
    score = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2))
    assert model.training  # flags restored
    assert score(model) == pytest.approx(1.0, abs=1e-6)
    converted = mo.apply_mode(model, ["fastnas"])
    assert score(converted) == pytest.approx(1.0, abs=1e-6)
    get_search_space(converted).select({"conv1.out_channels": 2, "conv2.out_channels": 4, "conv3.out_channels": 8})
    assert score(converted) < 0.9
    with pytest.raises(mo.ConfigError, match="at least one input batch"):
        OutputAgreement(model, [])


def test_random_inputs_are_reproducible() -> None:
    a, b = random_inputs((2, 3), num_batches=2, seed=4), random_inputs((2, 3), num_batches=2, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])


def _exact(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    now = model.state_dict()
    return list(now) == list(before) and all(torch.equal(now[k], v) for k, v in before.items())


def test_prune_without_a_budget_raises_before_converting() -> None:
    model = tiny_cnn()
    for constraints in ({}, None):
        with pytest.raises(mo.ConstraintError, match="FastNAS needs a budget"):
            prune(model, constraints, DUMMY, {"score_func": _score()})  # type: ignore[arg-type]
    with pytest.raises(mo.ArgumentError, match="dummy_input"):
        prune(model, {"flops": "50%"}, None, {"score_func": _score()})
    with pytest.raises(mo.ArgumentError, match="torch.nn.Module"):
        prune(lambda x: x, {"flops": "50%"}, DUMMY, {"score_func": _score()})  # type: ignore[arg-type]
    assert mo.applied_modes(model) == [] and not has_search_space(model)


class _FailingScore:
    """A real score for ``good_calls`` calls, then ``bad`` (NaN, a string, or an exception)."""

    def __init__(self, bad: object, good_calls: int) -> None:
        self.bad, self.left, self.inner = bad, good_calls, _score()

    def __call__(self, model: torch.nn.Module) -> object:
        if self.left == 0:
            if isinstance(self.bad, BaseException):
                raise self.bad
            return self.bad
        self.left -= 1
        return self.inner(model)


@pytest.mark.parametrize("bad", [float("nan"), "0.9", RuntimeError("scorer crashed")], ids=["nan", "string", "raises"])
@pytest.mark.parametrize("good_calls", [0, 3], ids=["first-score", "mid-map"])
def test_a_failing_score_leaves_the_model_bit_for_bit_as_it_was(bad: object, good_calls: int) -> None:
    fresh = tiny_cnn()
    before = _exact(fresh)
    error = mo.SearchError if not isinstance(bad, BaseException) else RuntimeError
    with pytest.raises(error):
        prune(fresh, {"flops": "50%"}, DUMMY, {"score_func": _FailingScore(bad, good_calls), "verbose": False})
    assert mo.applied_modes(fresh) == [] and not has_search_space(fresh)  # prune converted it: rolled back
    assert type(fresh.conv1) is torch.nn.Conv2d and _same(before, fresh)
    # A model converted beforehand stays converted, at its original subnet, with unpermuted channels.
    converted = mo.apply_mode(tiny_cnn(), ["fastnas"])
    subnet, before = get_search_space(converted).config(), _exact(converted)
    with pytest.raises(error):
        prune(converted, {"flops": "50%"}, DUMMY, {"score_func": _FailingScore(bad, good_calls), "verbose": False})
    assert mo.applied_modes(converted) == ["fastnas"] and get_search_space(converted).config() == subnet
    assert _same(before, converted)
