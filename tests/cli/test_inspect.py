from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeopt_core import __version__
from modeopt_core.cli import main
from tests.cli.cli_support import SUBNET

_ENV = {**os.environ, "MODEOPT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _stored(path: Path) -> tuple[int, int]:
    with safe_open(str(path), framework="pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def test_inspect_reports_versions_chain_subnet_and_tensors(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    count, nbytes = _stored(checkpoint)
    assert f"{checkpoint} (" in out and "intact" in out
    assert f"modeopt format v1, written by modeopt-core {__version__}" in out
    assert "modes       cli_pick -> toy_tag" in out
    assert "1. cli_pick  [registered explicitly]" in out and "2. toy_tag" in out
    assert "ratios=[0.1, 0.2, 0.3, …, 0.8, 0.9, 1] (10 items)" in out and "divisor=4" in out
    assert "tag=pruned" in out
    assert "subnet: 0.out_features=6  2.in_features=6  stage.1.kernel=3" in out
    assert f"tensors     {count} stored, {nbytes} B of tensor data" in out


def test_inspect_json_is_complete(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(checkpoint)]) == 0
    data = json.loads(capsys.readouterr().out)
    count, nbytes = _stored(checkpoint)
    assert data["intact"] is True and data["diagnosis"] is None
    assert data["format_version"] == 1 and data["library_version"] == __version__
    assert [m["name"] for m in data["modes"]] == ["cli_pick", "toy_tag"]
    assert data["modes"][0]["config"] == {"ratios": [round(0.1 * i, 1) for i in range(1, 11)], "divisor": 4}
    assert data["modes"][0]["subnet"] == SUBNET and data["modes"][1]["subnet"] is None
    assert data["plugin_versions"]["cli_pick"] == ["<unregistered>", ""]
    assert (data["num_tensors"], data["tensor_bytes"]) == (count, nbytes)
    assert data["file_bytes"] == checkpoint.stat().st_size


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size - 7])
    return dst


def _bit_flipped(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[-3] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _foreign(src: Path, dst: Path) -> Path:
    save_file({"weight": torch.zeros(2, 2)}, str(dst))
    return dst


def _text(src: Path, dst: Path) -> Path:
    dst.write_text("not a checkpoint at all\n")
    return dst


def _missing(src: Path, dst: Path) -> Path:
    return dst


def _directory(src: Path, dst: Path) -> Path:
    dst.mkdir()
    return dst


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncated, "truncated|does not fit|short"),
        (_bit_flipped, "digest|corrupt"),
        (_foreign, "modeopt"),
        (_text, "safetensors"),
        (_missing, "no such file"),
        (_directory, "no such file|not a file|directory"),
    ],
    ids=["truncated", "bit-flip", "foreign-safetensors", "text", "missing", "directory"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_damaged_file_one_line_diagnosis_exit_1(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, expected: str, as_json: bool
) -> None:
    import re

    bad = damage(checkpoint, tmp_path / "bad.safetensors")
    assert main(["inspect", *(["--json"] if as_json else []), str(bad)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modeopt inspect: error: "), captured.err
    assert re.search(expected, lines[0], re.IGNORECASE), lines[0]
    assert "Traceback" not in captured.err
    if as_json:
        data = json.loads(captured.out)
        assert data["intact"] is False and data["diagnosis"] in lines[0]
    else:
        assert captured.out == ""


def test_inspect_in_a_subprocess_needs_no_plugin(checkpoint: Path) -> None:
    """The file is described without the modes' plugins (they are not registered in the child)."""
    proc = subprocess.run([sys.executable, "-m", "modeopt_core", "inspect", str(checkpoint)],
                          capture_output=True, text=True, env=_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cli_pick -> toy_tag" in proc.stdout and "subnet: 0.out_features=6" in proc.stdout


def test_damaged_file_in_a_subprocess_has_no_traceback(checkpoint: Path, tmp_path: Path) -> None:
    bad = _bit_flipped(checkpoint, tmp_path / "bad.safetensors")
    proc = subprocess.run([str(Path(sys.executable).with_name("modeopt")), "inspect", str(bad)],
                          capture_output=True, text=True, env=_ENV, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and "digest" in proc.stderr


def test_inspect_shows_the_subnet_of_a_real_autonas_checkpoint(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Integration with the AutoNAS plugin, found through its entry point like any user's install."""
    pytest.importorskip("modeopt_autonas", reason="the modeopt-autonas distribution is not installed")
    import modeopt_core as mo
    from modeopt_core.checkpoint import save

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    model = mo.apply_mode(model, "autonas")
    path = tmp_path / "nas.safetensors"
    save(model, path)
    assert main(["inspect", "--json", str(path)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["modes"]
    assert entry["name"] == "autonas" and entry["subnet"], entry
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    first_key, first_value = next(iter(entry["subnet"].items()))
    assert "1. autonas  [modeopt-autonas " in out and f"subnet: {first_key}={first_value}" in out


def test_inspect_prints_the_plugins_one_line_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mode's plugin contributes a summary line through ``modeopt_summarize_metadata``."""
    import modeopt_core as mo
    from modeopt_core.checkpoint import save

    class _Summaries:
        @mo.hookimpl
        def modeopt_summarize_metadata(self, mode: object, config: dict, metadata: dict) -> str | None:
            if getattr(mode, "name", "") == "export_nas":
                return f"custom summary of {len(metadata['subnet'])} hparams"
            return None

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    model = mo.export(mo.apply_mode(model, "fastnas"))
    path = tmp_path / "pruned.safetensors"
    save(model, path)
    name = mo.register_plugin(_Summaries(), name="summaries")
    try:
        assert main(["inspect", "--json", str(path)]) == 0
        fastnas, export = json.loads(capsys.readouterr().out)["modes"]
        # the built-in summary of the NAS modes, and the wrapper plugin's answer (tried first)
        assert fastnas["summary"] == (
            "search space of 1 searchable hparams: 3 channel groups (2 frozen by the analysis), 0 elastic-depth sequentials"
        )
        assert export["summary"] == "custom summary of 1 hparams"
        assert main(["inspect", str(path)]) == 0
        assert "summary: custom summary of 1 hparams" in capsys.readouterr().out
    finally:
        mo.unregister_plugin(name)
