"""EvolveSearcher and RandomSearcher with a ``latency`` limit (deterministic op-cost timer, elastic depth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import modeopt_autonas as mtn
from modeopt_core import ConfigError, ConstraintError
from tests._fake_timer import OpCostTimer

from ._nas_helpers import DUMMY, accuracy_on, digits_batches, held_out, supernet

FAST = {"runs": 1, "warmup": 0, "calibration_runs": 1, "report_runs": 1}


def _config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "score_func": accuracy_on(*held_out()),
        "data_loader": digits_batches(4, 64),
        "min_calibration_batches": 4,
        "num_iters": 8,
        "verbose": False,
        # elastic depth changes how many layers run: no per-call constant keeps the fake sum exact
        "latency_options": {"timer": OpCostTimer(0.0), "cache_dir": tmp_path, **FAST},
        **overrides,
    }


@pytest.mark.parametrize("searcher", [mtn.EvolveSearcher, mtn.RandomSearcher])
@pytest.mark.parametrize("constraints", [{"latency": "60%"}, {"latency": "70%", "flops": "50%"},
                                         {"latency": "80%", "params": "50%"}])
def test_every_candidate_meets_the_latency_limit(searcher: type, constraints: dict[str, Any], tmp_path: Path) -> None:
    model = supernet()
    config = _config(tmp_path)
    if searcher is mtn.EvolveSearcher:
        config.update(population_size=4, candidate_size=2)
    result = searcher().search(model, constraints, DUMMY, config)
    limits = result["constraints"]["limits"]
    lat = result["latency"]
    assert limits["latency"] == pytest.approx(float(constraints["latency"][:-1]) / 100 * lat["measured_before"])
    history = result["history"]
    assert history and all(r["satisfied"] for r in history)
    for record in history:
        assert set(record["constraints"]) == set(constraints)
        assert all(record["constraints"][n] <= limits[n] for n in constraints)
    assert result["subnet"] == result["best"]["config"]
    assert lat["after"] == pytest.approx(result["best"]["constraints"]["latency"])
    assert lat["measured_after"] == pytest.approx(lat["predicted_after"], rel=1e-9) and abs(lat["error"]) < 1e-9
    assert lat["calibration"]["max_abs_error"] < 1e-9


def test_visited_candidates_are_measured(tmp_path: Path) -> None:
    result = mtn.RandomSearcher().search(supernet(), {"latency": "70%"}, DUMMY,
                                         _config(tmp_path, num_iters=3, latency_report="visited"))
    visited = result["latency"]["visited"]
    assert len(visited) == 3
    for point, record in zip(visited, result["history"]):
        assert point["predicted"] == pytest.approx(record["constraints"]["latency"])
        assert point["measured"] == pytest.approx(point["predicted"], rel=1e-9)


def test_an_unreachable_latency_fails_before_searching(tmp_path: Path) -> None:
    model = supernet()
    before = mtn.get_subnet_config(model)
    with pytest.raises(ConstraintError, match=r"latency: smallest subnet [\d.]+ ms > limit 0\.000 ms"):
        mtn.EvolveSearcher().search(model, {"latency": 1e-6}, DUMMY, _config(tmp_path))
    assert mtn.get_subnet_config(model) == before


def test_bad_latency_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="latency_report='all' is invalid"):
        mtn.EvolveSearcher().search(supernet(), {"latency": "60%"}, DUMMY, _config(tmp_path, latency_report="all"))


def test_a_best_candidate_that_misses_as_measured_is_replaced(tmp_path: Path) -> None:
    """With ReLUs charged per element the prediction is close, not exact: at 44% the best candidate
    measures above the limit, and the best scored candidate under the refitted model is taken."""
    timer = OpCostTimer(0.0, activation_element_s=1e-7)
    options = {"timer": timer, "cache_dir": tmp_path, **FAST}
    trusted = mtn.RandomSearcher().search(supernet(), {"latency": "44%"}, DUMMY,
                                          _config(tmp_path, latency_options=options, latency_verify=0))
    assert trusted["latency"]["measured_ratio"] > 0.44 and trusted["latency"]["verification"] is None
    result = mtn.RandomSearcher().search(supernet(), {"latency": "44%"}, DUMMY,
                                         _config(tmp_path, latency_options=options))
    check = result["latency"]["verification"]
    assert check["met"] and check["refits"] == 1 and not check["rounds"][0]["met"]
    assert result["latency"]["measured_ratio"] <= 0.44
    assert result["subnet"] == result["best"]["config"] == check["subnet"] != trusted["subnet"]
    scored = [r for r in result["history"] if r["score"] is not None]
    assert result["best"]["config"] in [r["config"] for r in scored]  # no new evaluation
    assert result["best"]["score"] <= trusted["best"]["score"]
