from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from modeopt_core.errors import CheckpointError
from modeopt_core.searcher import SEARCH_CHECKPOINT_KIND
from modeopt_core.statefile import read_state_file, write_state_file
from tests.core.search.search_toys import (
    BATCH,
    IN_FEATURES,
    EveryIterationSearcher,
    RandomChoiceSearcher,
    ScoreOnData,
    make_net,
    script_search,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DUMMY = torch.randn(BATCH, IN_FEATURES)


class Interrupt(Exception):
    pass


class InterruptingScore(ScoreOnData):
    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at = stop_at

    def __call__(self, model: torch.nn.Module) -> float:
        if self.calls + 1 == self.stop_at:
            self.calls += 1
            raise Interrupt
        return super().__call__(model)


def _run(
    ckpt: Path | None,
    score: ScoreOnData | None = None,
    searcher: RandomChoiceSearcher | None = None,
    constraints: Any = None,
    dummy: torch.Tensor = DUMMY,
    **config: Any,
) -> dict[str, Any]:
    config = {
        "score_func": score or ScoreOnData(),
        "num_iters": 30,
        "seed": 5,
        "verbose": False,
        "checkpoint": ckpt,
        **config,
    }
    searcher = searcher or EveryIterationSearcher()
    return searcher.search(make_net(), constraints or {"flops": "70%"}, dummy, config)


def _without_resumed(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if k != "resumed"}


def test_finished_search_resumes_without_rescoring(tmp_path: Path) -> None:
    ckpt = tmp_path / "sub" / "search.ckpt"
    first = _run(ckpt)
    assert ckpt.exists() and not first["resumed"]
    data = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)
    assert data["state"]["iter_num"] == 30 and data["fingerprint"]["config"]["seed"] == 5
    score = ScoreOnData()
    again = _run(ckpt, score)
    assert again["resumed"] and score.calls == 0
    assert _without_resumed(again) == _without_resumed(first)


def test_raising_num_iters_continues_a_finished_search(tmp_path: Path) -> None:
    reference = _run(None, num_iters=25)
    ckpt = tmp_path / "s.ckpt"
    _run(ckpt, num_iters=10)
    score = ScoreOnData()
    extended = _run(ckpt, score, num_iters=25)
    assert _without_resumed(extended) == _without_resumed(reference)
    new_scored = {tuple(r["config"].values()) for r in extended["history"][10:] if r["satisfied"] and not r["cached"]}
    assert score.calls == len(new_scored)


@pytest.mark.parametrize("stop_at", [1, 4, 9])
def test_interrupted_search_resumes_exactly(tmp_path: Path, stop_at: int) -> None:
    reference = _run(None, patience=12)
    ckpt = tmp_path / "s.ckpt"
    with pytest.raises(Interrupt):
        _run(ckpt, InterruptingScore(stop_at), patience=12)
    existed = ckpt.exists()
    assert existed or stop_at == 1  # every finished iteration was checkpointed
    resumed = _run(ckpt, patience=12)
    assert resumed["resumed"] == existed
    assert _without_resumed(resumed) == _without_resumed(reference)


def test_throttled_checkpoints_still_resume_exactly(tmp_path: Path) -> None:
    reference = _run(None, searcher=RandomChoiceSearcher())
    ckpt = tmp_path / "s.ckpt"
    with pytest.raises(Interrupt):
        _run(ckpt, InterruptingScore(6), searcher=RandomChoiceSearcher())
    resumed = _run(ckpt, searcher=RandomChoiceSearcher())
    assert _without_resumed(resumed) == _without_resumed(reference)


def test_state_dict_round_trip_includes_rng() -> None:
    a = EveryIterationSearcher()
    _run(None, searcher=a, num_iters=5)
    state = a.state_dict()
    assert set(state) == {"iter_num", "history", "best", "stopped_early", "original_config", "since_best", "rng_state"}
    b = EveryIterationSearcher()
    b.load_state_dict(state)
    assert b.history == a.history and b.rng.random() == a.rng.random()


def test_changed_search_is_refused_with_the_differences(tmp_path: Path) -> None:
    ckpt = tmp_path / "s.ckpt"
    _run(ckpt, num_iters=5)
    with pytest.raises(CheckpointError, match=r"config\.seed: 5 -> 6.*delete the file"):
        _run(ckpt, num_iters=5, seed=6)
    with pytest.raises(CheckpointError, match=r"constraints\.flops: '70%' -> '60%'"):
        _run(ckpt, num_iters=5, constraints={"flops": "60%"})
    with pytest.raises(CheckpointError, match=r"constraints\.params: '<missing>' -> 100"):
        _run(ckpt, num_iters=5, constraints={"flops": "70%", "params": 100})
    with pytest.raises(CheckpointError, match=r"dummy_input\.tensor"):
        _run(ckpt, num_iters=5, dummy=torch.randn(4, IN_FEATURES))
    with pytest.raises(CheckpointError, match=r"searcher: .*EveryIterationSearcher.* -> .*RandomChoiceSearcher"):
        _run(ckpt, num_iters=5, searcher=RandomChoiceSearcher())
    # verbose and the checkpoint path itself may change.
    moved = tmp_path / "moved.ckpt"
    shutil.copy(ckpt, moved)
    assert _run(moved, num_iters=5, verbose=False)["resumed"]


def test_bad_checkpoint_files_are_clear_errors(tmp_path: Path) -> None:
    ckpt = tmp_path / "s.ckpt"
    _run(ckpt, num_iters=3)
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        _run(ckpt, num_iters=3)

    other = tmp_path / "other.ckpt"
    write_state_file(other, {"x": 1}, kind="something-else")
    with pytest.raises(CheckpointError, match="kind"):
        _run(other, num_iters=3)

    layout = tmp_path / "layout.ckpt"
    write_state_file(layout, {"state": {}}, kind=SEARCH_CHECKPOINT_KIND)
    with pytest.raises(CheckpointError, match="unexpected layout"):
        _run(layout, num_iters=3)


def test_checkpoint_with_foreign_state_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "s.ckpt"
    _run(ckpt, num_iters=3)
    data = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)
    del data["state"]["since_best"]
    write_state_file(ckpt, data, kind=SEARCH_CHECKPOINT_KIND)
    with pytest.raises(CheckpointError, match=r"missing \['since_best'\]"):
        _run(ckpt, num_iters=3)
    data["state"]["since_best"] = 0
    data["state"]["rng_state"] = [3, [1, 2], None]
    write_state_file(ckpt, data, kind=SEARCH_CHECKPOINT_KIND)
    with pytest.raises(CheckpointError, match="rng_state: expected 625 integers"):
        _run(ckpt, num_iters=3)


def _subprocess_search(ckpt: Path, out: Path, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tests.core.search.search_toys", str(ckpt), str(out)]
    if kill_at is not None:
        cmd.append(str(kill_at))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_sigkilled_search_process_resumes_to_the_same_result(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the script: identical float results
    try:
        reference = json.loads(json.dumps(script_search(None)))  # uninterrupted, in this process
    finally:
        torch.set_num_threads(threads)
    assert reference["score_calls"] > 12

    ckpt, out = tmp_path / "killed.ckpt", tmp_path / "killed.json"
    killed = _subprocess_search(ckpt, out, kill_at=10)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    partial = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)["state"]
    assert 0 < partial["iter_num"] < 40

    resumed_run = _subprocess_search(ckpt, out)
    assert resumed_run.returncode == 0, resumed_run.stderr
    resumed = json.loads(out.read_text())
    assert resumed_run.stdout == "" and resumed_run.stderr == ""  # verbose=False: no output at all
    assert resumed["resumed"] and not reference["resumed"]
    assert resumed["score_calls"] == reference["score_calls"] - 9  # the 9 scored before the kill are kept
    for key in ("best", "history", "iterations", "num_evaluated", "num_satisfied", "constraints"):
        assert resumed[key] == reference[key], key


class CountingSaves(RandomChoiceSearcher):
    checkpoint_interval_s = 0.0

    def __init__(self, write_s: float) -> None:
        super().__init__()
        self.write_s = write_s
        self.saves = 0

    def save_search_checkpoint(self) -> None:
        self.saves += 1
        time.sleep(self.write_s)  # stands in for a large history being written
        super().save_search_checkpoint()


def test_checkpoint_writes_are_throttled_by_interval_and_overhead(tmp_path: Path) -> None:
    every = CountingSaves(0.0)
    every.checkpoint_max_overhead = None
    _run(tmp_path / "a.ckpt", searcher=every, num_iters=20)
    assert every.saves == 21  # after each iteration, plus the final write

    slow = CountingSaves(0.02)  # 20 ms writes, ~ms iterations: at most 10% of the time goes to writing
    _run(tmp_path / "b.ckpt", searcher=slow, num_iters=20)
    assert 2 <= slow.saves <= 12

    assert RandomChoiceSearcher.checkpoint_interval_s == 1.0  # default minimum interval
    counting = CountingSaves(0.0)
    counting.checkpoint_interval_s = 60.0  # a search shorter than the interval only writes when it ends
    _run(tmp_path / "c.ckpt", searcher=counting, num_iters=20)
    assert counting.saves == 1
