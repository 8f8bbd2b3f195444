"""The ``modeopt prune`` and ``modeopt demo`` commands the FastNAS plugin contributes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import modeopt_core as mo
from modeopt_autonas.space.latency import model as latency_model
from modeopt_core.checkpoint import restore
from modeopt_core.cli import main, plugin_commands
from tests._fake_timer import OpCostTimer
from tests.fastnas._models import INPUT_SHAPE, tiny_cnn


def _flops(model: torch.nn.Module) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(INPUT_SHAPE))
    return int(counter.get_total_flops())


def test_the_plugin_contributes_prune_and_demo() -> None:
    commands, problems = plugin_commands({"plugins", "inspect"})
    by_name = {c.name: c for c in commands}
    assert {"prune", "demo"} <= set(by_name) and by_name["prune"].plugin == "fastnas"
    assert not [p for p in problems if "fastnas" in p]


def test_prune_a_factory_data_free_and_restore_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pruned.safetensors"
    status = main(["-q", "prune", "--model", "tests.fastnas._models:tiny_cnn", "--input-shape", "1,3,8,8",
                   "--flops", "50%", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "pruned tests.fastnas._models:tiny_cnn to {'flops': '50%'}" in text and "output agreement" in text
    assert "note: BatchNorm statistics were not re-estimated" in text
    model = restore(tiny_cnn(), out)
    assert mo.applied_modes(model) == ["fastnas", "export_nas"]
    assert type(model.conv1) is torch.nn.Conv2d
    assert _flops(model) <= 0.5 * _flops(tiny_cnn())


def test_prune_with_a_user_score_and_a_params_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.safetensors"
    status = main(["-q", "prune", "--model", "tests.fastnas._models:tiny_cnn", "--input-shape", "1,3,8,8",
                   "--params", "40%", "--score", "tests.fastnas._models:output_energy", "--out", str(out)])
    assert status == 0
    assert "tests.fastnas._models:output_energy" in capsys.readouterr().out
    model = restore(tiny_cnn(), out)
    assert sum(p.numel() for p in model.parameters()) <= 0.4 * sum(p.numel() for p in tiny_cnn().parameters())


def test_prune_to_a_latency_budget_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the deterministic op-cost timer stands in for the wall clock (tests never depend on real timings)
    monkeypatch.setattr(latency_model, "WallClockTimer", lambda device=None: OpCostTimer())
    monkeypatch.setenv("MODEOPT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "fast.safetensors"
    args = ["-q", "prune", "--model", "tests.fastnas._models:tiny_cnn", "--input-shape", "1,3,8,8",
            "--latency", "60%", "--flops", "90%", "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # --threads applies to the search only
    assert "{'flops': '90%', 'latency': '60%'}" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("latency"))
    assert "predicted" in line and "measured on the export" in line and "prediction error" in line
    assert "latency budget met as measured after 1 check(s) (0 refit(s) of the latency model)" in text
    assert list((tmp_path / "cache" / "latency").glob("latency-*.safetensors"))  # the table is cached
    assert _flops(restore(tiny_cnn(), out)) <= 0.9 * _flops(tiny_cnn())


def test_prune_in_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "staged.safetensors"
    status = main(["-q", "prune", "--model", "tests.fastnas._models:tiny_cnn", "--input-shape", "1,3,8,8",
                   "--flops", "35%", "--stages", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "  stage 1: FLOPs " in text and "  stage 2: FLOPs " in text
    model = restore(tiny_cnn(), out)
    assert mo.applied_modes(model) == ["fastnas", "export_nas", "fastnas", "export_nas"]
    assert _flops(model) <= 0.35 * _flops(tiny_cnn())


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "no_such_module_xyz:f", "--flops", "50%"], "--model 'no_such_module_xyz:f': cannot import"),
    (["--model", "tests.fastnas._models", "--flops", "50%"], "must look like MODULE:NAME"),
    (["--model", "tests.fastnas._models:INPUT_SHAPE", "--flops", "50%"], "is not callable"),
    (["--model", "tests.fastnas._models:tiny_cnn"], "give a budget"),
    (["--model", "tests.fastnas._models:tiny_cnn", "--latency", "50%", "--threads", "0"], "--threads must be >= 1"),
    (["--model", "tests.fastnas._models:tiny_cnn", "--flops", "1%"], "cannot be met: the smallest subnet"),
    (["--model", "tests.fastnas._models:tiny_cnn", "--latency", "50%", "--latency-verify", "-1"], "latency_verify"),
    (["--model", "tests.fastnas._models:tiny_cnn", "--flops", "50%", "--stages", "0"], "'stages' must be an int >= 1"),
    (["--model", "tests.fastnas._models:tiny_cnn", "--latency", "50%", "--stages", "2"], "use stages=1"),
])
def test_prune_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["-q", "prune", "--input-shape", "1,3,8,8", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("modeopt prune: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_prune_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--model", "m:f", "--input-shape", "1,x", "--flops", "5%", "--out", "o"]) == 2
    assert "expected a comma-separated shape" in capsys.readouterr().err
    assert main(["prune", "--model", "m:f", "--input-shape", "1,3", "--flops", "sixty", "--out", "o"]) == 2
    assert "expected a percentage like 60%" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "demo", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["model", "val", "acc"]
    assert [line.split()[0] for line in table.splitlines()[2:5]] == ["baseline", "pruned", "fine-tuned"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rows"]
    assert rows["pruned"]["flops"] <= 0.5 * rows["baseline"]["flops"]
    assert rows["fine-tuned"]["accuracy"] >= rows["baseline"]["accuracy"] - 1.5
    assert (tmp_path / "pruned.safetensors").exists() and (tmp_path / "baseline.safetensors").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sensitivity.png").stat().st_size > 0 and (tmp_path / "thresholds.png").stat().st_size > 0

    assert main(["-q", "demo", "--out", str(tmp_path), "--flops", "30%"]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["search"]["baseline_cached"] and again["search"]["resumed"]
    assert again["search"]["num_score_evals"] == 0
    assert again["rows"]["pruned"]["flops"] <= 0.3 * again["rows"]["baseline"]["flops"]


def test_demo_distill_without_the_distill_plugin_says_how_to_install_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MODEOPT_PLUGINS": "autonas,fastnas"}  # modeopt-distill installed but not loaded
    proc = subprocess.run([sys.executable, "-m", "modeopt_core", "-q", "demo", "--distill", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("modeopt demo: error: distillation needs the kd_loss mode of the modeopt-distill "
                                  "plugin, which is not installed")
    assert "pip install -e plugins/distill" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # refused before training anything
