from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modeopt_core._atomic import atomic_fd, atomic_write_bytes, remove_stale_temporaries, temporary_pattern, write_all


def test_writes_new_file_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two", durable=True)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_fd(target) as fd:
        names = [p.name for p in tmp_path.iterdir() if p.name != "f.bin"]
        assert len(names) == 1 and temporary_pattern(target).fullmatch(names[0])
        write_all(fd, b"partial new content")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_keyboard_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    with pytest.raises(KeyboardInterrupt), atomic_fd(target) as fd:
        write_all(fd, b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_permissions_of_replaced_file_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"a")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"b")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_relative_path_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write_bytes("rel.bin", b"x")
    assert (tmp_path / "rel.bin").read_bytes() == b"x"


def test_missing_directory_raises_without_leaving_anything(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "f.bin", b"x")
    assert list(tmp_path.iterdir()) == []


def test_write_all_writes_large_views_completely(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    atomic_write_bytes(tmp_path / "big.bin", memoryview(data))  # type: ignore[arg-type]
    assert (tmp_path / "big.bin").read_bytes() == data


# --------------------------------------------------------------------------- stale temporaries
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from modeopt_core._atomic import atomic_fd, write_all
    with atomic_fd(sys.argv[1]) as fd:
        write_all(fd, b"half-written")
        print("writing", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _start_writer(target: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[3])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    return proc


def _temporaries(target: Path) -> list[Path]:
    pattern = temporary_pattern(target)
    return [p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]


def test_a_killed_writer_leaves_one_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    atomic_write_bytes(target, b"previous")
    proc = _start_writer(target, 60)
    proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    (stray,) = _temporaries(target)
    assert stray.read_bytes() == b"half-written" and target.read_bytes() == b"previous"
    other = tmp_path / ".m.safetensors.notours.tmp"  # other names are never touched
    other.write_bytes(b"x")
    unrelated = tmp_path / ".other.bin.abcdefgh.tmp"
    unrelated.write_bytes(b"y")
    atomic_write_bytes(target, b"next")
    assert target.read_bytes() == b"next"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.safetensors", other.name, unrelated.name])


def test_a_live_writers_temporary_is_never_removed(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    proc = _start_writer(target, 3)
    try:
        (live,) = _temporaries(target)
        assert remove_stale_temporaries(target) == []  # locked by the live writer
        atomic_write_bytes(target, b"concurrent")  # a concurrent save of the same path works too
        assert live.exists()
    finally:
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()  # type: ignore[union-attr]
    assert target.read_bytes() == b"half-written"  # the slower writer's rename came last
    assert _temporaries(target) == []


def test_removal_skips_a_temporary_renamed_into_place_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    stale = tmp_path / ".f.bin.abcd1234.tmp"
    stale.write_bytes(b"stale")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert remove_stale_temporaries(target) == [stale]
    assert not stale.exists()
    link_target = tmp_path / "elsewhere"
    link_target.write_bytes(b"keep")
    (tmp_path / ".f.bin.zzzz9999.tmp").symlink_to(link_target)
    assert remove_stale_temporaries(target) == []  # links are not followed, nor removed
    assert link_target.read_bytes() == b"keep"
