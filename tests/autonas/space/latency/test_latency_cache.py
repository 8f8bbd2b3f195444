"""The latency cache: reuse, what invalidates what, and corrupt files (deterministic op-cost timer)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import (
    LatencyCacheError,
    LatencyCacheWarning,
    LatencyModel,
    default_latency_cache_dir,
    get_search_space,
)
from modeopt_autonas.space.latency import model as latency_model_module
from modeopt_autonas.space.latency.cache import CACHE_KIND, LatencyCache
from modeopt_core import read_state_file, write_state_file
from modeopt_fastnas.digits import DigitsResNet
from tests._fake_timer import OpCostTimer

FAST = {"runs": 1, "warmup": 0, "calibration_runs": 1, "report_runs": 1}
X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _space(num_classes: int = 10, dtype: torch.dtype = torch.float32) -> Any:
    torch.manual_seed(0)
    model = mo.apply_mode(DigitsResNet((4, 8, 8), num_classes=num_classes).eval().to(dtype), ["fastnas"])
    return get_search_space(model)


def _build(cache: Path, space: Any = None, x: torch.Tensor = X, **options: Any) -> LatencyModel:
    return LatencyModel.build(space if space is not None else _space(), x,
                              **{"timer": OpCostTimer(), "cache_dir": cache, **FAST, **options})


def _files(cache: Path) -> list[Path]:
    return sorted(cache.glob("latency-*.safetensors"))


def test_a_second_build_measures_nothing(tmp_path: Path) -> None:
    first = _build(tmp_path)
    assert first.stats["measured"] == first.stats["variants"] > 0 and first.stats["calibrated"]
    timer = OpCostTimer()
    second = _build(tmp_path, timer=timer)
    assert timer.calls == 0
    assert second.stats["measured"] == 0 and second.stats["reused"] == first.stats["variants"]
    assert not second.stats["calibrated"]
    space = _space()
    config = space.sample("min")
    assert second.latency(config) == first.latency(config)
    assert second.stats["cache_file"] == first.stats["cache_file"] == str(_files(tmp_path)[0])


def test_identical_layers_are_measured_once(tmp_path: Path) -> None:
    model = _build(tmp_path)
    groups = {tuple(r["layers"]) for r in model.rows()}
    assert ("layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2") in groups
    assert model.stats["groups"] < model.stats["units"]


@pytest.mark.parametrize("change", ["threads", "torch", "device", "dtype", "timer"])
def test_a_new_context_measures_everything_in_its_own_file(change: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = _build(tmp_path)
    space, x, options = _space(), X, {}
    if change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "device":
        monkeypatch.setattr(latency_model_module, "device_name", lambda device=None: "cpu: another machine")
    elif change == "dtype":
        space, x = _space(dtype=torch.float64), X.double()
    else:
        class OtherTimer(OpCostTimer):
            pass

        options = {"timer": OtherTimer()}
    second = _build(tmp_path, space, x, **options)
    assert second.stats["measured"] == second.stats["variants"] == first.stats["variants"]
    assert second.stats["calibrated"] and len(_files(tmp_path)) == 2
    context = second.stats["context"]
    expected = {"threads": 7, "torch": "9.9.9", "device": "cpu: another machine", "dtype": "torch.float64"}
    if change in expected:
        assert context[change] == expected[change]
    else:
        assert context["timer"].endswith("OtherTimer")


def test_a_changed_layer_remeasures_only_that_layer(tmp_path: Path) -> None:
    _build(tmp_path)
    changed = _build(tmp_path, _space(num_classes=12))  # only the classifier's shape differs
    (fc,) = [r for r in changed.rows() if r["layers"] == ["fc"]]
    assert changed.stats["measured"] == fc["measured"] == len(fc["ms"]) > 0
    assert changed.stats["reused"] == changed.stats["variants"] - fc["measured"]
    assert changed.stats["calibrated"]  # another model: its own calibration
    assert len(_files(tmp_path)) == 1  # same context, same file, both models' rows


def test_edited_measurements_invalidate_the_calibration(tmp_path: Path) -> None:
    first = _build(tmp_path)
    (path,) = _files(tmp_path)
    data = read_state_file(path, kind=CACHE_KIND)
    rows = next(iter(data["entries"].values()))
    for key in rows:
        rows[key] = [rows[key][0] * 2, 0.0]
    write_state_file(path, data, kind=CACHE_KIND)
    second = _build(tmp_path)
    assert second.stats["measured"] == 0 and second.stats["calibrated"]
    assert second.calibration["slope"] != first.calibration["slope"]


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped byte":
        i = len(raw) - 40
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x20]) + raw[i + 1:])
    elif how == "not a state file":
        path.write_text(json.dumps({"entries": {}}))
    elif how == "other kind":
        write_state_file(path, {"a": 1}, kind="something-else")
    else:
        data = read_state_file(path, kind=CACHE_KIND)
        if how == "negative milliseconds":
            rows = next(iter(data["entries"].values()))
            rows[next(iter(rows))] = [-1.0, 0.0]
        elif how == "other context":
            data["context"] = {**data["context"], "threads": 99}
        elif how == "bad calibration":
            next(iter(data["calibrations"].values()))["points"] = []
        write_state_file(path, data, kind=CACHE_KIND)


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "not a state file", "other kind",
                                 "negative milliseconds", "other context", "bad calibration"])
def test_a_corrupt_file_is_an_error_naming_it_and_is_rebuilt(how: str, tmp_path: Path) -> None:
    first = _build(tmp_path)
    (path,) = _files(tmp_path)
    _corrupt(path, how)
    cache = LatencyCache(tmp_path, first.stats["context"])
    with pytest.raises(LatencyCacheError, match=str(path)):
        cache.load()
    with pytest.warns(LatencyCacheWarning, match=str(path)) as caught:
        rebuilt = _build(tmp_path)
    assert "measured afresh" in str(caught[0].message)
    assert rebuilt.stats["measured"] == rebuilt.stats["variants"] and rebuilt.stats["calibrated"]
    assert path.with_name(path.name + ".corrupt").exists()
    assert LatencyCache(tmp_path, first.stats["context"]).load()  # the rebuilt file is valid again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build(tmp_path).stats["measured"] == 0


def test_no_cache_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEOPT_CACHE_DIR", str(tmp_path))
    model = _build(tmp_path, cache_dir=False)
    assert model.stats["cache_file"] is None and not list(tmp_path.rglob("*.safetensors"))
    assert _build(tmp_path, cache_dir=False).stats["measured"] == model.stats["variants"]


def test_default_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEOPT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_latency_cache_dir() == tmp_path / "mine" / "latency"
    built = LatencyModel.build(_space(), X, timer=OpCostTimer(), **FAST)
    assert Path(built.stats["cache_file"]).parent == tmp_path / "mine" / "latency"
    monkeypatch.delenv("MODEOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_latency_cache_dir() == tmp_path / "xdg" / "modeopt" / "latency"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_latency_cache_dir() == tmp_path / "home" / ".cache" / "modeopt" / "latency"


def test_two_writers_merge(tmp_path: Path) -> None:
    """A process that saved rows meanwhile does not lose them when another one saves."""
    context = _build(tmp_path).stats["context"]
    mine = LatencyCache(tmp_path, context)
    mine.load()
    theirs = LatencyCache(tmp_path, context)
    theirs.load()
    theirs.entries["their layer"] = {"4,4": [1.0, 0.0]}
    theirs.save()
    mine.entries["my layer"] = {"8": [2.0, 0.1]}
    mine.save()
    merged = LatencyCache(tmp_path, context)
    merged.load()
    assert merged.entries["their layer"] == {"4,4": [1.0, 0.0]} and merged.entries["my layer"] == {"8": [2.0, 0.1]}
