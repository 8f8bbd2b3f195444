from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_core.calibration import DataLoaderForwardLoop, recalibrate_batchnorm
from modeopt_core.errors import ConfigError, ConstraintError, SearchError
from modeopt_core.searcher import BaseSearcher, IterativeSearcher
from tests.core.search.search_toys import (
    BATCH,
    IN_FEATURES,
    RandomChoiceSearcher,
    ScoreOnData,
    expected_flops,
    expected_params,
    make_net,
)

DUMMY = torch.randn(BATCH, IN_FEATURES)


def _search(
    searcher: BaseSearcher | None = None, model: nn.Module | None = None, constraints: Any = None, **config: Any
) -> tuple[nn.Module, dict[str, Any], ScoreOnData]:
    model = model if model is not None else make_net()
    score = config.pop("score_func", None) or ScoreOnData()
    config = {"score_func": score, "verbose": False, **config}
    results = (searcher or RandomChoiceSearcher()).search(model, constraints, DUMMY, config)
    return model, results, score


class TracingSearcher(RandomChoiceSearcher):
    """Records the order in which the lifecycle hooks run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def before_search(self) -> None:
        self.calls.append("before_search")
        super().before_search()

    def before_step(self) -> None:
        self.calls.append("before_step")

    def sample(self) -> dict[str, Any]:
        self.calls.append("sample")
        return super().sample()

    def after_step(self, candidate: dict[str, Any]) -> None:
        self.calls.append("after_step")
        super().after_step(candidate)

    def early_stop(self) -> bool:
        self.calls.append("early_stop")
        return False

    def after_search(self) -> None:
        self.calls.append("after_search")
        super().after_search()


def test_lifecycle_order_and_no_argument_construction() -> None:
    searcher = TracingSearcher()
    _search(searcher, num_iters=2)
    step = ["before_step", "sample", "after_step", "early_stop"]
    assert searcher.calls == ["before_search", *step, *step, "after_search"]
    with pytest.raises(TypeError):
        BaseSearcher()  # type: ignore[abstract]  # run_search is abstract


def test_history_best_and_model_left_at_best() -> None:
    model, results, score = _search(constraints={"flops": "70%", "params": 1000}, num_iters=25, seed=3)
    history = results["history"]
    assert results["iterations"] == len(history) == 25 and not results["stopped_early"]
    limit_flops = 0.7 * expected_flops({f"blocks.{i}": 32 for i in range(3)})
    assert results["constraints"]["limits"] == {"flops": pytest.approx(limit_flops), "params": 1000}
    for rec in history:
        assert rec["constraints"] == {"flops": expected_flops(rec["config"]), "params": expected_params(rec["config"])}
        fits = rec["constraints"]["flops"] <= limit_flops and rec["constraints"]["params"] <= 1000
        assert rec["satisfied"] == fits
        assert (rec["score"] is None) == (not fits)  # unsatisfied candidates are never scored
    satisfied = [r for r in history if r["satisfied"]]
    assert satisfied and any(not r["satisfied"] for r in history)  # the constraint really bites
    best = max(satisfied, key=lambda r: r["score"])
    assert results["best"]["config"] == best["config"] and results["best"]["score"] == best["score"]
    assert results["satisfied"] and results["num_satisfied"] == len(satisfied)
    assert [r["iteration"] for r in history if r["is_best"]][-1] == results["best"]["iteration"]
    assert [b.active for b in model.blocks] == [results["best"]["config"][f"blocks.{i}"] for i in range(3)]
    assert score(model) == results["best"]["score"]  # the returned model is the best one
    # One score evaluation per distinct satisfied config (the cache serves repeats).
    distinct = {tuple(r["config"].values()) for r in satisfied}
    assert score.calls == len(distinct) + 1


def test_cache_reuses_results_of_repeated_configs() -> None:
    model = make_net(num_blocks=2, widths=(4, 8))
    _, results, score = _search(model=model, constraints={"params": 10_000}, num_iters=20)
    history = results["history"]
    assert results["num_evaluated"] == 4 == score.calls  # only 4 configs exist
    cached = [r for r in history if r["cached"]]
    assert len(cached) == 16
    first = {tuple(r["config"].values()): r for r in reversed(history) if not r["cached"]}
    for rec in cached:
        original = first[tuple(rec["config"].values())]
        assert (rec["score"], rec["constraints"]) == (original["score"], original["constraints"])


def test_no_satisfied_candidate_means_no_best_and_original_config() -> None:
    model = make_net()
    for block, width in zip(model.blocks, (8, 4, 16)):
        block.active = width
    score = ScoreOnData()
    _, results, _ = _search(model=model, constraints={"params": 10}, num_iters=10, score_func=score)
    assert results["best"] is None and not results["satisfied"] and results["num_satisfied"] == 0
    assert all(not r["satisfied"] and r["score"] is None and not r["is_best"] for r in results["history"])
    assert [b.active for b in model.blocks] == [8, 4, 16]  # back to where it started
    assert score.calls == 0


def test_early_stop_with_subclass_config_key() -> None:
    _, results, _ = _search(constraints={"flops": "80%"}, num_iters=200, patience=5, seed=0)
    assert results["stopped_early"] and results["iterations"] < 200
    last_best = max(r["iteration"] for r in results["history"] if r["is_best"])
    assert results["iterations"] == last_best + 1 + 5


def test_same_seed_same_search_and_other_seed_differs() -> None:
    runs = [_search(constraints={"flops": "70%"}, num_iters=15, seed=s)[1] for s in (11, 11, 12)]
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["best"] == runs[1]["best"]
    assert [r["config"] for r in runs[0]["history"]] != [r["config"] for r in runs[2]["history"]]


def test_training_flags_restored_after_search_and_after_error() -> None:
    model = make_net(bn=True).train()
    model.head.eval()
    _search(model=model, num_iters=3)  # ScoreOnData calls model.eval()
    assert model.training and model.norm.training and not model.head.training

    def broken(m: nn.Module) -> float:
        m.eval()
        raise RuntimeError("score failed")

    with pytest.raises(RuntimeError, match="score failed"):
        _search(model=model, num_iters=3, score_func=broken)
    assert model.training and model.norm.training and not model.head.training


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"num_iter": 5},
            r"unknown search config key\(s\) \['num_iter'\].*did you mean 'num_iters'.*accepted keys: "
            r"\['checkpoint', 'collect_func', 'data_loader', 'forward_loop', 'max_iter_data_loader', "
            r"'num_iters', 'patience', 'score_func', 'seed', 'shard_evaluations', 'verbose'\]",
        ),
        ({"data_loader": [1], "forward_loop": print}, "mutually exclusive"),
        ({"num_iters": 0}, r"num_iters=0 is invalid; expected an int >= 1"),
        ({"num_iters": "5"}, "num_iters='5'"),
        ({"num_iters": True}, "num_iters=True"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"verbose": "yes"}, "expected True or False"),
        ({"score_func": 3}, "not callable"),
        ({"forward_loop": "loop"}, "not callable"),
        ({"checkpoint": 5}, "file path"),
        ({"max_iter_data_loader": 0}, "max_iter_data_loader=0"),
        ({"data_loader": 5}, "not iterable"),
        ({"collect_func": len}, "only applies to data_loader"),
        ({"score_func": None}, "needs config\\['score_func'\\]"),
    ],
)
def test_config_errors_name_the_problem_and_leave_model_untouched(config: dict[str, Any], fragment: str) -> None:
    model = make_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    actives = [b.active for b in model.blocks]
    with pytest.raises(ConfigError, match=fragment):
        RandomChoiceSearcher().search(model, {"flops": "50%"}, DUMMY, {"score_func": ScoreOnData(), **config})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [b.active for b in model.blocks] == actives and model.training


def test_other_search_argument_errors() -> None:
    with pytest.raises(ConfigError, match="must be a dict"):
        RandomChoiceSearcher().search(make_net(), None, DUMMY, [("num_iters", 3)])  # type: ignore[arg-type]
    with pytest.raises(mo.ArgumentError, match=r"search\(\) argument 'model' must be a torch.nn.Module"):
        RandomChoiceSearcher().search("model", None, DUMMY, {})  # type: ignore[arg-type]
    with pytest.raises(ConstraintError, match="need a dummy_input"):
        RandomChoiceSearcher().search(make_net(), {"flops": 100}, None, {"score_func": ScoreOnData()})
    with pytest.raises(ConstraintError, match="unknown constraint"):
        RandomChoiceSearcher().search(make_net(), {"flop": 100}, DUMMY, {"score_func": ScoreOnData()})
    with pytest.raises(SearchError, match="finite number"):
        _search(num_iters=2, score_func=lambda m: float("nan"))


def test_unconstrained_search_without_dummy_input_scores_everything() -> None:
    score = ScoreOnData()
    results = RandomChoiceSearcher().search(
        make_net(), {}, None, {"score_func": score, "num_iters": 5, "verbose": False}
    )
    assert all(r["satisfied"] and r["constraints"] == {} for r in results["history"])
    assert results["constraints"] == {"spec": {}, "limits": {}, "reference": {}}


class CalibratingSearcher(RandomChoiceSearcher):
    """Re-estimates BN on the calibration data of the config after each selection."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_counts: list[int] = []

    def sample(self) -> dict[str, Any]:
        config = super().sample()
        assert self.forward_loop is not None
        self.batch_counts.append(recalibrate_batchnorm(self.model, self.forward_loop, min_batches=3))
        return config


def test_data_loader_becomes_a_counting_forward_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, IN_FEATURES, generator=gen) + 5.0, torch.zeros(8)) for _ in range(6)]
    searcher = CalibratingSearcher()
    model = make_net(bn=True)
    _search(searcher, model=model, num_iters=3, data_loader=loader, max_iter_data_loader=4)
    assert isinstance(searcher.forward_loop, DataLoaderForwardLoop)
    assert searcher.batch_counts == [4, 4, 4] and searcher.forward_loop.total_num_batches == 12
    with torch.no_grad():
        stem_means = torch.stack([model.stem(x).mean(0) for x, _ in loader[:4]]).mean(0)
    assert torch.allclose(model.norm.running_mean, stem_means, atol=1e-5)

    calls: list[nn.Module] = []
    searcher = CalibratingSearcher()
    with pytest.warns(UserWarning, match=r"only 1 batch\(es\) \(min_batches=3\)"):
        _search(searcher, model=make_net(bn=True), num_iters=2, forward_loop=lambda m: calls.append(m) or m(DUMMY))
    assert len(calls) == 2 and searcher.batch_counts == [1, 1]


def test_subclass_hooks_are_abstract() -> None:
    class Incomplete(IterativeSearcher):
        def sample(self) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="current_config|select"):
        Incomplete()  # type: ignore[abstract]
