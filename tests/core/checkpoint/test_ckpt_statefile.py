from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from modeopt_core import _container
from modeopt_core._reader import read_header
from modeopt_core.errors import CheckpointError
from modeopt_core.statefile import STATE_FILE_FORMAT, read_state_file, write_state_file
from tests.core.checkpoint.ckpt_helpers import assert_same, rewrite, trees

KIND = "search/binary"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=8), trees(), max_size=5))
def test_roundtrip_property(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "state.st"
    write_state_file(path, data, kind=KIND)
    assert_same(data, read_state_file(path, kind=KIND))


def test_search_like_state_roundtrip(tmp_path: Path) -> None:
    mask = torch.rand(64) > 0.5
    base = torch.randn(8, 8)
    data = {
        "iteration": 17,
        "best": {"score": 0.875, "subnet": {"conv1.out_channels": 32, "kernel": (3, 3)}},
        "sensitivity": {(0.5,): 0.01, (0.25,): 0.2, 3: float("nan")},
        "history": [(i, i / 10) for i in range(3)],
        "mask": mask,
        "views": [base, base[1], base.t()],  # views of one storage are stored apart
        "same": [base, base],
    }
    path = tmp_path / "search.ckpt"
    write_state_file(path, data, kind=KIND)
    out = read_state_file(path, kind=KIND)
    assert_same(data, out)
    assert out["same"][0] is out["same"][1]
    out["views"][0].add_(1)  # loaded tensors own their memory
    assert not torch.equal(out["views"][0][1], out["views"][1])


def test_header_records_format_kind_and_version(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    write_state_file(path, {"a": 1}, kind=KIND)
    meta = read_header(path).metadata
    assert meta["format"] == STATE_FILE_FORMAT and meta["format_version"] == "1" and meta["kind"] == KIND
    assert meta["digest"].startswith("sha256:") and json.loads(meta["data"]) == {"a": 1}


def test_wrong_kind_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    write_state_file(path, {"a": 1}, kind=KIND)
    with pytest.raises(CheckpointError, match="kind 'search/binary', not 'search/evolve'"):
        read_state_file(path, kind="search/evolve")


@pytest.mark.parametrize("kind", ["", " x", 3])
def test_bad_kind_argument(tmp_path: Path, kind: Any) -> None:
    with pytest.raises(CheckpointError, match="kind must be"):
        write_state_file(tmp_path / "s.st", {}, kind=kind)


def test_data_must_be_a_dict_of_supported_values(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    with pytest.raises(CheckpointError, match="must be a dict"):
        write_state_file(path, [1, 2], kind=KIND)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"<root>\['cfg'\]\['fn'\]"):
        write_state_file(path, {"cfg": {"fn": print}}, kind=KIND)
    assert not path.exists()


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    write_state_file(path, {"v": 1}, kind=KIND)
    with pytest.raises(CheckpointError):
        write_state_file(path, {"v": object()}, kind=KIND)
    with pytest.raises(CheckpointError, match="dtype torch.complex128"):
        write_state_file(path, {"v": torch.zeros(2, dtype=torch.complex128)}, kind=KIND)
    assert read_state_file(path, kind=KIND) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.st"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        write_state_file(tmp_path / "no" / "s.st", {}, kind=KIND)


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "s.st"
    write_state_file(path, {"t": torch.arange(100.0), "n": 3}, kind=KIND)
    return path


def test_every_corrupted_byte_is_detected(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    raw = path.read_bytes()
    for pos in [*range(0, len(raw), max(1, len(raw) // 97)), len(raw) - 1]:
        broken = bytearray(raw)
        broken[pos] ^= 0x01
        path.write_bytes(bytes(broken))
        with pytest.raises(CheckpointError):
            read_state_file(path, kind=KIND)


def test_every_truncation_is_detected(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    raw = path.read_bytes()
    for cut in sorted({0, 1, 7, 8, 9, 100, len(raw) // 2, len(raw) - 400, len(raw) - 1}):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            read_state_file(path, kind=KIND)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "does not fit"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (b"PK\x03\x04" + bytes(range(256)) * 4, "does not fit|not valid JSON"),
    ],
    ids=["empty", "short", "huge-length", "binary-header", "array-header", "zip-like"],
)
def test_foreign_bytes(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "s.st"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_file(path, kind=KIND)


def test_plain_safetensors_file_is_foreign(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match="without modeopt metadata"):
        read_state_file(path, kind=KIND)
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="a 'pt' file, not a 'modeopt-state' file"):
        read_state_file(path, kind=KIND)


@pytest.mark.parametrize(
    "version, message", [("2", "format version 2.*upgrade modeopt-core"), ("0", "invalid"), ("x1", "invalid")]
)
def test_format_versions_other_than_1_are_refused(tmp_path: Path, version: str, message: str) -> None:
    path = _valid(tmp_path)
    rewrite(path, format_version=version)
    with pytest.raises(CheckpointError, match=message):
        read_state_file(path, kind=KIND)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": "{not json"}, "not valid JSON"),
        ({"data": '{"a": {"__evil__": 1}}'}, "unknown marker"),
        ({"data": '{"a": {"__tensor__": "__modeopt__/data/99"}}'}, "lacks"),
        ({"data": "[1, 2]"}, "expected a dict"),
        ({"aliases": '{"x": "missing"}'}, "does not point at a stored tensor"),
        ({"aliases": "[]"}, "not a JSON object"),
    ],
)
def test_tampered_but_digest_valid_headers(tmp_path: Path, change: dict[str, str], message: str) -> None:
    path = _valid(tmp_path)
    rewrite(path, **change)
    with pytest.raises(CheckpointError, match=message):
        read_state_file(path, kind=KIND)


def test_missing_digest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": STATE_FILE_FORMAT, "format_version": "1",
                                                         "kind": KIND, "data": "{}"})
    with pytest.raises(CheckpointError, match="no 'digest'"):
        read_state_file(path, kind=KIND)


def test_unknown_dtype_and_gapped_offsets_in_header(tmp_path: Path) -> None:
    path = tmp_path / "s.st"
    for entry, message in [
        ({"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "do not match"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "expected"),
        ({"dtype": "F32", "shape": [1], "data_offsets": "0-4"}, "invalid data offsets"),
        ("nonsense", "not a tensor description"),
    ]:
        header = json.dumps({"w": entry, "__metadata__": {"format": "modeopt-state"}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
        with pytest.raises(CheckpointError, match=message):
            read_state_file(path, kind=KIND)


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CheckpointError, match="trailing bytes"):
        read_state_file(path, kind=KIND)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_file(tmp_path / "nope", kind=KIND)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_state_file(tmp_path, kind=KIND)


def test_header_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_container, "MAX_HEADER_BYTES", 2000)
    with pytest.raises(CheckpointError, match="header would be .* mostly 'data'.*tensors"):
        write_state_file(tmp_path / "s.st", {"names": [f"name{i}" for i in range(500)]}, kind=KIND)
    write_state_file(tmp_path / "s.st", {"ranks": list(range(100000))}, kind=KIND)  # packed: fits
    assert read_state_file(tmp_path / "s.st", kind=KIND)["ranks"][-1] == 99999


def test_files_with_a_blake2b_digest_still_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.state"
    monkeypatch.setattr(_container, "_DIGEST_ALGO", "blake2b-256")
    write_state_file(path, {"a": 1, "t": torch.arange(3)}, kind="test/old")
    monkeypatch.undo()
    assert read_header(path).metadata["digest"].startswith("blake2b-256:")
    data = read_state_file(path, kind="test/old")
    assert data["a"] == 1 and torch.equal(data["t"], torch.arange(3))
