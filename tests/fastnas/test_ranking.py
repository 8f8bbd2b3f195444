"""importance="auto": the probe subnet per ranking, the choice, and that the probe leaves no trace."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_fastnas import LossScore, OutputAgreement, prune, random_inputs
from modeopt_fastnas.ranking import uniform_subnet
from modeopt_fastnas.scores import model_outputs
from tests.fastnas._models import INPUT_SHAPE, batches, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)


@given(st.dictionaries(st.sampled_from("abcd"), st.lists(st.integers(1, 64), min_size=1, unique=True), min_size=1),
       st.floats(0, 1), st.floats(0, 1))
def test_uniform_subnet_takes_the_smallest_choice_at_the_fraction_and_grows_with_it(
        choices: dict[str, list[int]], f1: float, f2: float) -> None:
    low, high = sorted((f1, f2))
    space = {n: tuple(c) for n, c in choices.items()}
    a, b = uniform_subnet(space, low), uniform_subnet(space, high)
    for name, options in choices.items():
        assert a[name] in options and a[name] <= b[name]
        assert a[name] >= low * max(options) - 1e-9
        assert all(c < low * max(options) - 1e-9 for c in options if c < a[name])  # nothing smaller qualifies
    assert uniform_subnet(space, 0.0) == {n: min(c) for n, c in choices.items()}


def _dead_channels() -> torch.nn.Module:
    """tiny_cnn whose two conv1 channels with the largest weights never fire: the weights rank them first,
    the activations last."""
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[:2] *= 10
        model.bn1.bias[:2] = -1e4
    return model


def _probe_by_hand(kind: str, subnet: dict[str, int], inputs: list[torch.Tensor]) -> float:
    """The probe's score rebuilt with the public space API: sort by ``kind``, select, score."""
    model = mo.apply_mode(_dead_channels(), ["fastnas"])
    space = get_search_space(model)
    targets = [n for n, _ in space.named_hparams(True)]
    if kind == "activation":
        scores = space.activation_importance(functools.partial(model_outputs, inputs=inputs), targets)
    else:
        scores = space.contribution_importance(targets)
    space.sort_by_importance(targets, scores=scores)
    space.select(subnet)
    return OutputAgreement(_dead_channels().eval(), inputs)(model)


def test_auto_scores_a_probe_per_ranking_and_keeps_the_better_one() -> None:
    inputs = random_inputs((8, *INPUT_SHAPE[1:]), num_batches=2, seed=1)
    config = {"score_func": OutputAgreement(_dead_channels().eval(), inputs), "verbose": False}
    _, auto = prune(mo.apply_mode(_dead_channels(), ["fastnas"]), {"flops": "70%"}, DUMMY, config)
    probe, subnet = auto["importance_probe"], auto["importance_probe_subnet"]
    assert set(probe) == {"contribution", "activation"}
    for kind, score in probe.items():  # each probe is what the module doc says it is
        assert score == pytest.approx(_probe_by_hand(kind, subnet, inputs), abs=1e-9)
    # the dead channels: the weights keep them, the activations prune them first
    assert probe["activation"] > probe["contribution"] and auto["importance"] == "activation"
    _, explicit = prune(mo.apply_mode(_dead_channels(), ["fastnas"]), {"flops": "70%"}, DUMMY,
                        {**config, "importance": "activation"})
    assert auto["subnet"] == explicit["subnet"] and auto["sensitivity_map"] == explicit["sensitivity_map"]
    assert auto["num_score_evals"] == explicit["num_score_evals"] + 2
    assert explicit["importance"] == "activation" and explicit["importance_probe"] is None


def _bn_search(importance: str = "auto", model: torch.nn.Module | None = None,
               score: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """tiny_cnn to 50 % FLOPs, BN statistics re-estimated per evaluation on 8 drawn batches."""
    return prune(model or mo.apply_mode(tiny_cnn(), ["fastnas"]), {"flops": "50%"}, DUMMY, {
        "score_func": score or LossScore(batches(2, seed=9)), "data_loader": batches(8), "verbose": False,
        "importance": importance, "min_calibration_batches": 4})


def test_the_probe_leaves_no_trace_with_bn_reestimated_per_evaluation() -> None:
    auto_model, auto = _bn_search("auto")
    chosen = auto["importance"]
    assert chosen in ("contribution", "activation") and auto["importance_probe"][chosen] == max(
        auto["importance_probe"].values())
    model, explicit = _bn_search(chosen)
    assert auto["subnet"] == explicit["subnet"] and auto["sensitivity_map"] == explicit["sensitivity_map"]
    assert auto["original_score"] == explicit["original_score"]
    expected = model.state_dict()
    for name, value in auto_model.state_dict().items():  # weights in the same order, the same BN statistics
        assert torch.equal(value, expected[name]), name


def test_without_data_a_plain_score_is_ranked_by_contribution_without_a_probe() -> None:
    reference = OutputAgreement(tiny_cnn().eval(), random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=3))
    calls: list[int] = []

    def score(model: torch.nn.Module) -> float:  # a plain callable: no batches to rank on
        calls.append(1)
        return reference(model)

    _, auto = prune(mo.apply_mode(tiny_cnn(), ["fastnas"]), {"flops": "50%"}, DUMMY,
                    {"score_func": score, "verbose": False})
    assert auto["importance"] == "contribution" and auto["importance_probe"] is None
    _, explicit = prune(mo.apply_mode(tiny_cnn(), ["fastnas"]), {"flops": "50%"}, DUMMY,
                        {"score_func": reference, "verbose": False, "importance": "contribution"})
    assert auto["sensitivity_map"] == explicit["sensitivity_map"] and len(calls) == explicit["num_score_evals"]


def test_a_resumed_search_keeps_the_chosen_ranking_without_probing(tmp_path: Any) -> None:
    ckpt = tmp_path / "search.ckpt"
    _, first = prune(mo.apply_mode(_dead_channels(), ["fastnas"]), {"flops": "70%"}, DUMMY, {
        "score_func": OutputAgreement(_dead_channels().eval(), random_inputs((8, 3, 8, 8), num_batches=1, seed=1)),
        "checkpoint": str(ckpt), "verbose": False})
    _, again = prune(mo.apply_mode(_dead_channels(), ["fastnas"]), {"flops": "40%"}, DUMMY, {
        "score_func": OutputAgreement(_dead_channels().eval(), random_inputs((8, 3, 8, 8), num_batches=1, seed=1)),
        "checkpoint": str(ckpt), "verbose": False})
    assert again["resumed"] and again["num_score_evals"] == 0  # neither probes nor map entries re-measured
    assert (again["importance"], again["importance_probe"]) == (first["importance"], first["importance_probe"])
    assert again["sensitivity_map"] == first["sensitivity_map"]


class _FailsAt:
    """A loss score that raises at its ``n``-th call (after the probe's BN re-estimation ran)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.score = n, 0, LossScore(batches(2, seed=9))

    def __call__(self, model: torch.nn.Module) -> float:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("score failed")
        return self.score(model)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failing_probe_leaves_the_model_bit_for_bit_as_it_was(fail_at: int) -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    before = copy.deepcopy(model.state_dict())
    config = get_search_space(model).config()
    with pytest.raises(RuntimeError, match="score failed"):
        _bn_search(model=model, score=_FailsAt(fail_at))
    assert get_search_space(model).config() == config
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name

