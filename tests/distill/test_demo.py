"""``modeopt demo --distill`` (FastNAS's demo applying ``kd_loss`` by name) and its distillation step."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import modeopt_core as mo
import modeopt_distill as md
from modeopt_core.cli import main
from modeopt_fastnas.demo import DISTILL_CONFIG, distil
from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders


def test_the_demo_step_distils_and_exports_the_student() -> None:
    torch.manual_seed(0)
    teacher = DigitsResNet((8, 16, 16)).eval()
    student = mo.apply_mode(copy.deepcopy(teacher), ["fastnas"])
    student = mo.export(student)
    before = copy.deepcopy(student.state_dict())
    out = distil(student, teacher, epochs=1, seed=0)
    assert mo.applied_modes(out) == ["fastnas", "export_nas", "kd_loss", "export_student"]
    assert not md.is_distilling(out) and list(out.state_dict()) == list(before)
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    recorded = mo.modeopt_state(out)["modes"][2]["config"]
    assert recorded["temperature"] == DISTILL_CONFIG["temperature"]


@pytest.mark.slow
def test_demo_distill_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "demo", "--distill", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[2:6]] == ["baseline", "pruned", "fine-tuned", "distilled"]
    assert "distilled vs fine-tuned: " in table and "after 5 epochs each" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rows"]
    assert rows["pruned"]["flops"] <= 0.3 * rows["baseline"]["flops"]
    assert rows["distilled"]["flops"] == rows["fine-tuned"]["flops"]
    assert summary["search"]["distill_config"] == DISTILL_CONFIG
    distilled = mo.restore(DigitsResNet(), tmp_path / "distilled.safetensors")
    assert mo.applied_modes(distilled) == ["fastnas", "export_nas", "kd_loss", "export_student"]
    _, val = digits_loaders(seed=0)
    assert accuracy(distilled, val) == pytest.approx(rows["distilled"]["accuracy"])
    assert rows["distilled"]["accuracy"] >= rows["baseline"]["accuracy"] - 2.0
