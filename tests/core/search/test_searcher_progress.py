from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modeopt_core.progress import set_progress_mode
from tests.core.search.search_toys import BATCH, IN_FEATURES, RandomChoiceSearcher, ScoreOnData, make_net

DUMMY = torch.randn(BATCH, IN_FEATURES)


@pytest.fixture
def auto_progress() -> Iterator[None]:
    previous = set_progress_mode("auto")  # independent of $MODEOPT_PROGRESS
    yield
    set_progress_mode(previous)


def _search(verbose: bool, checkpoint: Path | None = None, constraints: dict[str, object] | None = None) -> None:
    RandomChoiceSearcher().search(
        make_net(),
        constraints if constraints is not None else {"flops": "70%"},
        DUMMY,
        {"score_func": ScoreOnData(), "num_iters": 12, "verbose": verbose, "checkpoint": checkpoint},
    )


def test_quiet_search_writes_nothing_at_all(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path, auto_progress: None
) -> None:
    with caplog.at_level(logging.INFO):  # even with info logging enabled
        _search(verbose=False, checkpoint=tmp_path / "c.ckpt")
        _search(verbose=False, checkpoint=tmp_path / "c.ckpt")  # resumed
        _search(verbose=False, constraints={"params": 10})  # nothing satisfied
    out, err = capfd.readouterr()
    assert out == "" and err == "" and caplog.records == []


def test_verbose_search_reports_progress_lines_with_best_and_constraints(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, auto_progress: None
) -> None:
    with caplog.at_level(logging.INFO, logger="modeopt_core"):
        _search(verbose=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # not a terminal: plain log lines instead of a redrawn bar
    lines = [r.getMessage() for r in caplog.records if r.name == "modeopt_core.progress"]
    assert lines[-1].startswith("RandomChoiceSearcher: 12/12 candidate")
    assert "best=-" in lines[-1] and "flops=" in lines[-1] and "/4.5e+03" in lines[-1]
    assert any(
        r.name == "modeopt_core.iterative_searcher" and "best candidate" in r.getMessage() for r in caplog.records
    )


def test_progress_bar_style_draws_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    previous = set_progress_mode("bar")
    try:
        _search(verbose=True)
    finally:
        set_progress_mode(previous)
    out, err = capfd.readouterr()
    assert out == "" and "RandomChoiceSearcher" in err and "12/12" in err and "best=" in err


def test_verbose_search_logs_the_outcome(caplog: pytest.LogCaptureFixture, auto_progress: None) -> None:
    with caplog.at_level(logging.INFO, logger="modeopt_core"):
        _search(verbose=True, constraints={"params": 10})
    assert "no candidate satisfied the constraints {'params': 10}" in caplog.text
