from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import modeopt_core as mo
from modeopt_core import _container
from modeopt_core.checkpoint import inspect_checkpoint, restore, save
from modeopt_core.errors import CheckpointError
from modeopt_core.statefile import write_state_file
from tests.core.checkpoint.ckpt_helpers import CheckpointModes, rewrite, state_dict_copy
from tests.core.toymodes import ToyPlugin


def make_tiny(out: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out))


class Unchanged:
    """Records a model's structure, attributes, weights and modes to check nothing changed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.text = repr(model)
        self.attrs = {name: sorted(m.__dict__) for name, m in model.named_modules()}
        self.weights = state_dict_copy(model)

    def check(self) -> None:
        assert repr(self.model) == self.text
        assert {name: sorted(m.__dict__) for name, m in self.model.named_modules()} == self.attrs
        assert mo.applied_modes(self.model) == []
        now = self.model.state_dict()
        assert list(now) == list(self.weights)
        assert all(torch.equal(now[k], v) for k, v in self.weights.items())


def expect_failure(path: Path, match: str, model: nn.Module | None = None) -> CheckpointError:
    model = model if model is not None else make_tiny()
    guard = Unchanged(model)
    with pytest.raises(CheckpointError, match=match) as err:
        restore(model, path)
    guard.check()
    return err.value


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save(make_tiny(), path)
    return path


# ------------------------------------------------------------------------------------- damaged files


def _flip(pos_of: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def damage(raw: bytes) -> bytes:
        out = bytearray(raw)
        out[pos_of(len(raw))] ^= 0x40
        return bytes(out)

    return damage


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: b"", "empty file"),
        (lambda raw: raw[:5], "too short"),
        (lambda raw: raw[:200], "does not fit"),
        (lambda raw: raw[: len(raw) - 100], "truncated"),
        (lambda raw: raw[:-1], "truncated"),
        (_flip(lambda n: n - 10), "digest mismatch"),
        (_flip(lambda n: n // 2 + 300), "digest mismatch|not valid JSON|invalid|not a"),
        (lambda raw: os.urandom(len(raw)), "does not fit|not valid JSON"),
        (lambda raw: raw + b"\0", "trailing bytes"),
    ],
    ids=["empty", "5-bytes", "cut-in-header", "cut-in-data", "last-byte-missing", "bit-flip-data", "bit-flip-middle",
         "random-bytes", "appended"],
)
def test_damaged_files(saved: Path, damage: Callable[[bytes], bytes], match: str) -> None:
    saved.write_bytes(damage(saved.read_bytes()))
    expect_failure(saved, match)
    info = inspect_checkpoint(saved)
    assert not info.intact and info.diagnosis and "\n" not in info.diagnosis


def test_every_truncation_point_is_refused(saved: Path) -> None:
    raw = saved.read_bytes()
    model = make_tiny()
    for cut in range(0, len(raw), 37):
        saved.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            restore(model, saved)


def test_plain_safetensors_from_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny().state_dict().items()}, str(path))
    err = expect_failure(path, "without modeopt metadata")
    assert "load_state_dict" in str(err)


def test_state_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "search.ckpt"
    write_state_file(path, {"iteration": 1}, kind="search/binary")
    expect_failure(path, "a 'modeopt-state' file of kind 'search/binary', not a 'modeopt' file")
    info = inspect_checkpoint(path)
    assert not info.intact and "modeopt-state" in (info.diagnosis or "")


@pytest.mark.parametrize("version, match", [("2", "format version 2 .*upgrade modeopt-core"), ("0", "invalid"),
                                            ("", "invalid")])
def test_format_version(saved: Path, version: str, match: str) -> None:
    rewrite(saved, format_version=version, library_version="9.9.9")
    err = expect_failure(saved, match)
    if version == "2":
        assert "9.9.9" in str(err)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    expect_failure(tmp_path / "nope.safetensors", "no such file")
    expect_failure(tmp_path, "not a regular file")
    with pytest.raises(CheckpointError, match="no such file"):
        inspect_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"state": "{oops"}, "stored state is not valid JSON"),
        ({"state": '{"modes": 3}'}, "not a modeopt state"),
        ({"state": '{"modes": [{"name": {"__bad__": 1}}]}'}, "unknown marker"),
        ({"state": '{"state_version": 99, "modes": []}'}, "state version 99"),
        ({"state": '{"modes": [{"nome": "x"}]}'}, "malformed"),
        ({"aliases": '{"x": "nowhere"}'}, "does not point at a stored tensor"),
        ({"mode_provider": '{"a": "b"}'}, "malformed 'mode_provider'"),
        ({"module_versions": '{"": "2"}'}, "malformed 'module_versions'"),
        ({"extra_state": "[]"}, "extra state is not a dict"),
    ],
)
def test_tampered_headers_with_valid_digest(saved: Path, change: dict[str, str], match: str) -> None:
    rewrite(saved, **change)
    expect_failure(saved, match)


def test_header_without_state(saved: Path) -> None:
    rewrite(saved, drop=("state",))
    expect_failure(saved, "lacks 'state'")


# ------------------------------------------------------------------------------------- modes


def test_missing_plugin_names_its_distribution(tmp_path: Path) -> None:
    name = mo.register_plugin(CheckpointModes(), name="ckpt-modes-tmp", distribution="modeopt-ckpt-testmodes")
    try:
        model = mo.apply_mode(make_tiny(), [("ckpt_shrink", {"target": "2", "out_features": 1})])
        path = tmp_path / "m.safetensors"
        save(model, path)
    finally:
        mo.unregister_plugin(name)
    err = expect_failure(path, "not available")
    assert "'ckpt_shrink' was provided by modeopt-ckpt-testmodes" in str(err)
    assert isinstance(err.__cause__, mo.ModeNotFoundError)
    rewrite(path, mode_provider=json.dumps({"ckpt_shrink": ["modeopt-shrinkers", "1.2.3"]}))
    err = expect_failure(path, "not available")
    assert "modeopt-shrinkers 1.2.3" in str(err) and "pip install 'modeopt-shrinkers==1.2.3'" in str(err)
    info = inspect_checkpoint(path)  # inspection needs no plugin
    assert info.intact and info.modes == [("ckpt_shrink", {"target": "2", "out_features": 1})]
    assert info.plugin_versions == {"ckpt_shrink": ("modeopt-shrinkers", "1.2.3")}


def test_missing_explicitly_registered_mode(tmp_path: Path) -> None:
    name = mo.register_plugin(ToyPlugin(), name="toy-tmp")
    try:
        path = tmp_path / "m.safetensors"
        save(mo.apply_mode(make_tiny(), "toy_tag"), path)
    finally:
        mo.unregister_plugin(name)
    expect_failure(path, "'toy_tag' was registered explicitly")


def _set_state(path: Path, modes: list[dict[str, object]]) -> None:
    rewrite(path, state=json.dumps({"state_version": 1, "modeopt_version": "0.1.0", "modes": modes}))


def test_invalid_config_in_file(saved: Path, toy_modes: str) -> None:
    _set_state(saved, [{"name": "toy_scale", "config": {"factor": -1.0}, "metadata": {}}])
    err = expect_failure(saved, "cannot be restored")
    assert "factor" in str(err) and isinstance(err.__cause__, mo.ConfigError)
    _set_state(saved, [{"name": "toy_scale", "config": {"factr": 2.0}, "metadata": {}}])
    expect_failure(saved, "factr")


def test_invalid_chain_in_file(saved: Path, toy_modes: str) -> None:
    _set_state(saved, [{"name": "toy_unscale", "config": {}, "metadata": {}}])
    err = expect_failure(saved, "cannot be restored")
    assert isinstance(err.__cause__, mo.ModeChainError)


def test_model_with_modes_already_applied(saved: Path, toy_modes: str) -> None:
    model = mo.apply_mode(make_tiny(), "toy_tag")
    with pytest.raises(CheckpointError, match=r"already has modes \['toy_tag'\]"):
        restore(model, saved)


def test_mode_restore_failure_leaves_model_unchanged(tmp_path: Path, ckpt_modes: str) -> None:
    path = tmp_path / "m.safetensors"
    save(mo.apply_mode(make_tiny(), [("ckpt_shrink", {"target": "2", "out_features": 1})]), path)
    other = nn.Sequential(nn.Linear(4, 8))  # has no submodule "2"
    expect_failure(path, "restoring the recorded modes failed", other)


# ------------------------------------------------------------------------------------- shape checks


def test_shape_mismatch_lists_names_and_leaves_model_unchanged(saved: Path) -> None:
    err = expect_failure(saved, "does not fit this model", make_tiny(out=3))
    text = str(err)
    assert "shape mismatch (2): 2.bias: file (2,) vs model (3,), 2.weight: file (2, 8) vs model (3, 8)" in text
    assert "same class and constructor arguments" in text


def test_missing_and_unexpected_are_listed_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "deep.safetensors"
    save(nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)]), path)
    err = expect_failure(path, "does not fit", nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.BatchNorm1d(2)))
    text = str(err)
    assert "missing in the file (3): 2.num_batches_tracked, 2.running_mean, 2.running_var" in text
    assert "unexpected in the file (10): 3.bias, 3.weight, 4.bias, 4.weight, 5.bias, ... (5 more)" in text
    assert "shape mismatch (1): 2.weight: file (2, 2) vs model (2,)" in text


def test_mismatch_found_on_the_shadow_after_modes(tmp_path: Path, ckpt_modes: str) -> None:
    path = tmp_path / "m.safetensors"
    save(mo.apply_mode(make_tiny(), [("ckpt_shrink", {"target": "2", "out_features": 1})]), path)
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    err = expect_failure(path, "does not fit", other)
    assert "0.weight: file (8, 4) vs model (6, 4)" in str(err) and "2.weight: file (1, 8) vs model (1, 6)" in str(err)
    assert "modes ['ckpt_shrink']" in str(err)


def test_mismatch_found_after_guarded_restore_is_rolled_back(tmp_path: Path, ckpt_modes: str) -> None:
    path = tmp_path / "m.safetensors"
    save(mo.apply_mode(nn.Sequential(nn.Linear(3, 3)), "ckpt_needs_data"), path)
    other = nn.Sequential(nn.Linear(3, 5))
    expect_failure(path, r"0.weight: file \(3, 3\) vs model \(5, 3\)", other)
    assert not hasattr(other, "extra") and not hasattr(other, "first_value")


# ------------------------------------------------------------------------------------- save errors


def test_unsupported_state_value_keeps_previous_file(tmp_path: Path, ckpt_modes: str, saved: Path) -> None:
    before = saved.read_bytes()
    model = mo.apply_mode(make_tiny(), "ckpt_payload", mode_kwargs={"payload": {"fn": len}})
    with pytest.raises(CheckpointError, match=r"cannot store .*builtin_function_or_method.*\['payload'\]\['fn'\]"):
        save(model, saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_reserved_prefix_meta_tensors_and_dtypes(tmp_path: Path) -> None:
    model = nn.Module()
    model.add_module("__modeopt__/x", nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match="reserved prefix"):
        save(model, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="meta device"):
        save(nn.Linear(2, 2, device="meta"), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="complex128"):
        save(nn.Linear(2, 2, dtype=torch.complex128), tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        save(make_tiny(), tmp_path / "missing" / "m.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="cannot write"):
        save(make_tiny(), tmp_path / "dir.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.safetensors"]


def test_header_cap(tmp_path: Path, ckpt_modes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_container, "MAX_HEADER_BYTES", 5000)
    model = mo.apply_mode(make_tiny(), "ckpt_payload", mode_kwargs={"payload": [str(i) for i in range(2000)]})
    with pytest.raises(CheckpointError, match="mostly 'state'"):
        save(model, tmp_path / "m.safetensors")


# ------------------------------------------------------------------------------------- inspect


def test_inspect_reports_everything(saved: Path) -> None:
    info = inspect_checkpoint(saved)
    d = info.as_dict()
    assert d["intact"] and d["diagnosis"] is None and d["format_version"] == 1
    assert d["library_version"] == mo.__version__ and d["num_tensors"] == 4 and d["num_aliases"] == 0
    assert d["tensor_bytes"] == 4 * (8 * 4 + 8 + 2 * 8 + 2) and d["file_bytes"] == saved.stat().st_size
    json.dumps(d)


def test_inspect_keeps_what_it_could_read_from_a_damaged_file(saved: Path, toy_modes: str) -> None:
    save(mo.apply_mode(make_tiny(), "toy_tag"), saved)
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 1
    saved.write_bytes(bytes(raw))
    info = inspect_checkpoint(saved)
    assert not info.intact and "digest mismatch" in (info.diagnosis or "")
    assert info.modes == [("toy_tag", {"tag": "x"})] and info.format_version == 1
