from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modeopt_core._atomic import atomic_path, atomic_write_bytes


def test_writes_new_file_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.bin.")
        tmp.write_bytes(b"partial new content")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_keyboard_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_permissions_of_replaced_file_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"a")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"b")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_writer_that_replaces_the_temp_path_by_name(tmp_path: Path) -> None:
    # Libraries (safetensors) write by file name and may recreate the file: that must work too.
    target = tmp_path / "f.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()
        tmp.write_bytes(b"recreated")
    assert target.read_bytes() == b"recreated"


def test_relative_path_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write_bytes("rel.bin", b"x")
    assert (tmp_path / "rel.bin").read_bytes() == b"x"


def test_missing_directory_raises_without_leaving_anything(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "f.bin", b"x")
    assert list(tmp_path.iterdir()) == []
