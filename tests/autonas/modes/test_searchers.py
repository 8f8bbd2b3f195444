"""EvolveSearcher and RandomSearcher on a small supernet trained on real digits."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_core.checkpoint import save
from modeopt_core.constraints import ForwardProfiler
from modeopt_core.errors import CheckpointError, ConfigError, ConstraintError
from modeopt_core.progress import set_progress_mode
from modeopt_core.searcher import SEARCH_CHECKPOINT_KIND
from modeopt_core.statefile import read_state_file

from ._nas_helpers import DUMMY, accuracy_on, digits_batches, held_out, supernet, train_steps
from ._search_job import run as run_search_job

JOB = Path(__file__).with_name("_search_job.py")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = supernet()
        train_steps(model, digits_batches(20, 64))
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def model(trained_state: dict[str, torch.Tensor]) -> nn.Module:
    m = supernet()
    m.load_state_dict(trained_state)
    return m


def _config(**overrides: Any) -> dict[str, Any]:
    return {
        "score_func": accuracy_on(*held_out()),
        "data_loader": digits_batches(4, 64),
        "min_calibration_batches": 4,
        "num_iters": 8,
        "population_size": 4,
        "candidate_size": 2,
        "seed": 0,
        "verbose": False,
        **overrides,
    }


def _search(model: nn.Module, constraints: Any, searcher: type = mtn.EvolveSearcher, **overrides: Any) -> dict[str, Any]:
    keys = ("population_size", "candidate_size")
    config = _config(**overrides)
    if searcher is mtn.RandomSearcher:
        config = {k: v for k, v in config.items() if k not in keys}
    return searcher().search(model, constraints, DUMMY, config)


@pytest.mark.parametrize("searcher", [mtn.EvolveSearcher, mtn.RandomSearcher])
@pytest.mark.parametrize("constraints", [{"flops": "60%"}, {"params": "40%"}, {"flops": "70%", "params": 30000}])
def test_search_respects_constraints_and_returns_the_best_subnet(model: nn.Module, searcher: type, constraints: dict) -> None:
    original = ForwardProfiler(model, DUMMY).measure(["flops", "params"])
    result = _search(model, constraints, searcher)
    limits = result["constraints"]["limits"]
    for name, spec in constraints.items():
        expected = original[name] * float(spec[:-1]) / 100 if isinstance(spec, str) else spec
        assert limits[name] == pytest.approx(expected)
    history = result["history"]
    assert len(history) == 8 and all(r["satisfied"] and not r["cached"] for r in history)
    best = result["best"]
    assert best["score"] == max(r["score"] for r in history)
    assert result["subnet"] == best["config"] == mtn.get_subnet_config(model)
    exported = mo.export(model)
    measured = ForwardProfiler(exported, DUMMY).measure(list(constraints))
    assert measured == best["constraints"]  # analytic counts equal the exported model's counts
    assert all(measured[n] <= limits[n] for n in constraints)


def test_search_is_deterministic_for_a_seed(trained_state: dict[str, torch.Tensor]) -> None:
    runs = []
    for seed in (5, 5, 6):
        m = supernet()
        m.load_state_dict(trained_state)
        runs.append(_search(m, {"flops": "60%"}, seed=seed, num_iters=10))
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["best"] == runs[1]["best"]
    assert [r["config"] for r in runs[0]["history"]] != [r["config"] for r in runs[2]["history"]]


def test_evolution_breeds_from_the_best_of_each_generation(model: nn.Module) -> None:
    searcher = mtn.EvolveSearcher()
    result = searcher.search(model, {"flops": "60%"}, DUMMY, _config(num_iters=10, mutation_prob=0.0))
    first_generation = result["history"][:4]
    parents = sorted(first_generation, key=lambda r: -r["score"])[:2]
    assert [p["config"] for p in searcher.parents[:2]] != [] and len(searcher.parents) == 2
    # without mutation, each child of the second generation takes every value from a parent
    second_generation = result["history"][4:8]
    for child in second_generation:
        for name, value in child["config"].items():
            assert value in {p["config"][name] for p in parents}


def test_unsatisfiable_constraints_fail_before_searching(model: nn.Module) -> None:
    before = mtn.get_subnet_config(model)
    with pytest.raises(ConstraintError, match="smallest subnet"):
        _search(model, {"flops": 1000})
    assert mtn.get_subnet_config(model) == before


def test_a_search_after_supernet_training_calibrates_on_the_kept_training_batches() -> None:
    model = supernet()
    train_steps(model, digits_batches(9, 32))
    result = _search(model, {"flops": "60%"}, data_loader=None, num_iters=3)
    assert result["calibration_batches"] == 8 and len(result["history"]) == 3


def test_batchnorm_model_needs_calibration_data_or_an_explicit_opt_out(model: nn.Module) -> None:
    with pytest.raises(ConfigError, match="calibrate_bn"):
        _search(model, {"flops": "60%"}, data_loader=None)
    result = _search(model, {"flops": "60%"}, data_loader=None, calibrate_bn=False, num_iters=3)
    assert result["calibration_batches"] == 0 and len(result["history"]) == 3


def test_too_little_calibration_data_is_an_error_naming_the_count(model: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"only 2 batch\(es\).*min_calibration_batches"):
        _search(model, {"flops": "60%"}, data_loader=digits_batches(2, 64))


def test_only_scored_candidates_are_recalibrated_and_the_result_carries_its_statistics(model: nn.Module) -> None:
    batches = digits_batches(4, 64)
    calls = []

    def forward_loop(m: nn.Module) -> None:
        calls.append(mtn.get_search_space(m).config())
        for x, _ in batches:
            m(x)

    result = _search(model, {"flops": "50%"}, data_loader=None, forward_loop=forward_loop, num_iters=6, sample_tries=1)
    scored = [r for r in result["history"] if r["score"] is not None and not r["cached"]]
    unsatisfied = [r for r in result["history"] if not r["satisfied"]]
    assert unsatisfied, "sample_tries=1 lets unsatisfying candidates through; they must not be recalibrated"
    # once up front, once per scored candidate, once for the chosen subnet
    assert len(calls) == 1 + len(scored) + 1
    assert [c for c in calls[1:-1]] == [r["config"] for r in scored]
    assert calls[-1] == result["best"]["config"]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    mtn.recalibrate_bn(model, forward_loop=forward_loop, min_batches=4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())


def test_core_search_uses_the_evolutionary_searcher(model: nn.Module) -> None:
    searched, result = mo.search(model, {"flops": "60%"}, DUMMY, _config(num_iters=4))
    assert searched is model and result["searcher"] == "EvolveSearcher"
    model.eval()
    x, y = held_out()
    assert accuracy_on(x, y)(model) == result["best"]["score"]  # no stale-statistics warning either


def test_quiet_search_prints_and_logs_nothing(
    model: nn.Module, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _search(model, {"flops": "60%"}, num_iters=3)
    out, err = capfd.readouterr()
    assert out == "" and err == "" and [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_verbose_search_shows_best_score_and_constraint_values(
    model: nn.Module, capfd: pytest.CaptureFixture[str]
) -> None:
    previous = set_progress_mode("bar")
    try:
        _search(model, {"flops": "60%"}, num_iters=3, verbose=True)
    finally:
        set_progress_mode(previous)
    out, err = capfd.readouterr()
    assert out == "" and "EvolveSearcher" in err and "best=" in err and "flops=" in err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"candidate_size": 9}, "candidate_size=9 exceeds population_size=4"),
        ({"mutation_prob": 1.5}, "mutation_prob=1.5"),
        ({"crossover_prob": -0.1}, "crossover_prob=-0.1"),
        ({"population_sise": 3}, "did you mean 'population_size'"),
        ({"sample_tries": 0}, "sample_tries=0"),
    ],
)
def test_bad_search_config_is_rejected(model: nn.Module, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _search(model, {"flops": "60%"}, **overrides)


def test_resuming_with_another_search_config_is_refused(model: nn.Module, tmp_path: Path) -> None:
    ckpt = tmp_path / "search.ckpt"
    _search(model, {"flops": "60%"}, num_iters=2, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="mutation_prob"):
        _search(model, {"flops": "60%"}, num_iters=2, checkpoint=ckpt, mutation_prob=0.3)


def _job(*args: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEOPT_PROGRESS": "off"}
    return subprocess.Popen(
        [sys.executable, str(JOB), *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]


def test_search_killed_with_sigkill_resumes_to_the_same_best_subnet(model: nn.Module, tmp_path: Path) -> None:
    model_ckpt = tmp_path / "supernet.safetensors"
    save(model, model_ckpt)
    num_iters = 12
    full = run_search_job(str(model_ckpt), str(tmp_path / "full.ckpt"), num_iters, 0.0)  # in this process

    ckpt = tmp_path / "killed.ckpt"
    proc = _job(model_ckpt, ckpt, tmp_path / "resumed.json", num_iters, 0.4)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            done = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)["state"]["iter_num"]
            if done >= 4:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)["state"]["iter_num"]
    assert 4 <= done < num_iters
    assert not (tmp_path / "resumed.json").exists()

    _finish(_job(model_ckpt, ckpt, tmp_path / "resumed.json", num_iters, 0.0))
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed"] and not full["resumed"]
    assert resumed["best"] == full["best"] and resumed["subnet"] == full["subnet"]
    assert resumed["history"] == full["history"] and resumed["iterations"] == num_iters


def test_a_failing_score_leaves_the_model_as_the_search_found_it(model: nn.Module) -> None:
    mtn.recalibrate_bn(model, digits_batches(8, 32))
    start = mtn.get_subnet_config(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    calls = []

    def flaky(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("validation server went away")
        return 1.0

    with pytest.raises(RuntimeError, match="went away"):
        _search(model, {"flops": "60%"}, score_func=flaky)
    assert mtn.get_subnet_config(model) == start
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
