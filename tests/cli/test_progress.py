from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from modeopt_core import ConfigError
from modeopt_core.progress import progress, progress_mode, set_progress_mode

_LOGGER = "modeopt_core.progress"


@pytest.fixture(autouse=True)
def _env_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MODEOPT_PROGRESS", raising=False)
    previous = set_progress_mode(None)
    yield
    set_progress_mode(previous)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == _LOGGER]


def test_disabled_is_completely_silent(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert list(progress(range(5), desc="quiet", enabled=False)) == [0, 1, 2, 3, 4]
    with progress(total=3, desc="manual", enabled=False) as bar:
        bar.update(2)
        bar.set_postfix(loss=0.5)
    assert capfd.readouterr() == ("", "")
    assert caplog.records == []


def test_off_mode_from_environment_is_silent(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MODEOPT_PROGRESS", "off")
    assert progress_mode() == "off"
    assert sum(progress(range(4), desc="env-off")) == 6
    assert capfd.readouterr() == ("", "") and caplog.records == []


def test_bad_mode_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEOPT_PROGRESS", "fancy")
    with pytest.raises(ConfigError, match=r"MODEOPT_PROGRESS must be one of \['auto', 'bar', 'log', 'off'\]"):
        progress(range(2))
    with pytest.raises(ConfigError, match="progress mode"):
        set_progress_mode("loud")  # type: ignore[arg-type]


def test_not_a_terminal_gives_plain_log_lines(capfd: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)
    with progress(total=4, desc="search", unit="candidate", log_interval=3600) as bar:
        for step in range(4):
            bar.update(1)
            bar.set_postfix(score=0.25 * (step + 1))
    lines = _lines(caplog)
    # rate-limited: the start line and the final line only
    assert lines[0] == "search: started (4 candidate)"
    assert lines[-1].startswith("search: 4/4 candidate (100%) in 00:00")
    assert lines[-1].endswith(", score=1 (done)") and len(lines) == 2
    assert capfd.readouterr() == ("", "")  # nothing drawn on stderr itself


def test_log_lines_every_interval_and_when_stopped_early(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)
    for item in progress(range(10), desc="calib", log_interval=0):
        if item == 3:
            break
    lines = _lines(caplog)
    assert len(lines) >= 3  # start, periodic, end
    assert lines[-1].startswith("calib: 3/10 it (30%)") and lines[-1].endswith("(stopped)")
    assert any("~" in line and "left" in line for line in lines[1:-1])


def test_unknown_total_counts_items(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)
    assert list(progress(iter("abc"), desc="stream", unit="batch", log_interval=3600)) == ["a", "b", "c"]
    assert _lines(caplog) == ["stream: started", _lines(caplog)[-1]]
    assert _lines(caplog)[-1].startswith("stream: 3 batch in 00:00") and _lines(caplog)[-1].endswith("(done)")


def test_forced_bar_redraws_on_stderr(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)
    set_progress_mode("bar")
    with progress(total=3, desc="train") as bar:
        for _ in range(3):
            bar.update(1)
        bar.set_postfix(loss=0.125)
    err = capfd.readouterr().err
    assert "\r" in err and "train" in err and "3/3" in err and "loss=0.125" in err
    assert _lines(caplog) == []


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_mode_draws_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)
    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(3), desc="tty")) == [0, 1, 2]
    assert "tty" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert _lines(caplog) == []


def test_set_progress_mode_returns_previous() -> None:
    assert set_progress_mode("log") is None
    assert progress_mode() == "log"
    assert set_progress_mode("off") == "log"
    assert set_progress_mode(None) == "off"
    assert progress_mode() == "auto"
