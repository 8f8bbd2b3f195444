"""Save/restore in the middle of distillation and after export_student: one safetensors file, no teacher in it,
identical outputs (and identical losses once the teacher is attached again), restore never runs the factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import modeopt_core as mo
import modeopt_distill as md
from tests.distill import _models
from tests.distill._models import INPUT, batch

PAIRS = [{"weight": 0.5}, {"student": "features", "loss": "mse", "adapter": True}]


def _train_steps(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for i in range(steps):
        x, y = batch(8, seed=10 + i)
        opt.zero_grad()
        model.compute_kd_loss(student_loss=F.cross_entropy(model(x), y)).backward()
        opt.step()


def _distilled(config: dict, **kwargs: object) -> nn.Module:
    model = mo.apply_mode(_models.student(), [("kd_loss", config)],
                          mode_kwargs={"dummy_input": torch.zeros(INPUT), **kwargs})
    _train_steps(model)
    return model.eval()


def _tensor_names(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_mid_distillation_round_trip(tmp_path: Path) -> None:
    teacher = _models.teacher()
    model = _distilled({"pairs": PAIRS}, teacher=teacher)
    path = tmp_path / "mid.safetensors"
    mo.save(model, path)
    names = _tensor_names(path)
    assert {"modeopt_kd_adapter1_weight", "modeopt_kd_adapter1_bias"} <= set(names)  # the adapter is the student's
    student_keys = {k for k in model.state_dict()}
    assert {n for n in names if not n.startswith("__")} == student_keys  # and nothing of the teacher
    teacher_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
    assert path.stat().st_size < teacher_bytes + sum(v.numel() * v.element_size() for v in model.state_dict().values())

    restored = mo.restore(_models.student(seed=7), path).eval()
    assert mo.applied_modes(restored) == ["kd_loss"] and md.is_distilling(restored)
    x, y = batch(4, seed=99)
    assert torch.equal(restored(x), model(x))
    with pytest.raises(md.TeacherMissingError, match="pass it again: modeopt_distill.attach_teacher"):
        restored.compute_kd_loss()
    md.attach_teacher(restored, teacher)
    for m in (model, restored):
        m(x)
    assert torch.equal(model.compute_kd_loss(student_loss=F.cross_entropy(model(x), y)),
                       restored.compute_kd_loss(student_loss=F.cross_entropy(restored(x), y)))

    # training continues identically from the restored model
    _train_steps(model)
    _train_steps(restored)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


def test_after_export_student_round_trip(tmp_path: Path) -> None:
    model = mo.export(_distilled({"pairs": PAIRS}, teacher=_models.teacher()))
    path = tmp_path / "after.safetensors"
    mo.save(model, path)
    assert not any("kd_adapter" in n for n in _tensor_names(path))
    restored = mo.restore(_models.student(seed=7), path).eval()
    assert mo.applied_modes(restored) == ["kd_loss", "export_student"] and not md.is_distilling(restored)
    assert list(restored.state_dict()) == list(_models.student().state_dict())
    x, _ = batch(4, seed=5)
    assert torch.equal(restored(x), model(x))


def test_restore_never_calls_the_factory_and_attach_does(tmp_path: Path) -> None:
    factory = "tests.distill._models:teacher"
    model = _distilled({"teacher": factory, "pairs": PAIRS})
    path = tmp_path / "factory.safetensors"
    mo.save(model, path)
    info = mo.inspect_checkpoint(path)
    assert info.intact and info.modes[0][0] == "kd_loss" and info.modes[0][1]["teacher"] == factory
    calls = _models.FACTORY_CALLS["teacher"]
    restored = mo.restore(_models.student(), path).eval()
    assert _models.FACTORY_CALLS["teacher"] == calls  # loading a checkpoint runs no code
    restored(batch()[0])
    with pytest.raises(md.TeacherMissingError, match="attach_teacher\\(model\\) rebuilds it from the recorded factory "
                                                     "'tests.distill._models:teacher'"):
        restored.compute_kd_loss()
    md.attach_teacher(restored)  # the explicit opt-in
    assert _models.FACTORY_CALLS["teacher"] == calls + 1
    x, _ = batch(4)
    model(x)
    restored(x)
    assert torch.equal(model.compute_kd_loss(), restored.compute_kd_loss())


def test_attach_checks_the_teacher(tmp_path: Path) -> None:
    model = _distilled({"pairs": PAIRS}, teacher=_models.teacher())
    path = tmp_path / "m.safetensors"
    mo.save(model, path)
    restored = mo.restore(_models.student(), path).eval()
    with pytest.raises(md.TeacherMissingError, match="no teacher factory was recorded"):
        md.attach_teacher(restored)
    with pytest.raises(md.TeacherMismatchError, match="architecture .* but the model was distilled from a "
                                                      "tests.distill._models.SmallCNN"):
        md.attach_teacher(restored, _models.teacher_no_bn())
    with pytest.raises(md.LayerNotFoundError, match="pairs\\[1\\].teacher: the teacher has no module 'features'"):
        md.attach_teacher(restored, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), strict=False)
    other = md.attach_teacher(restored, _models.teacher_no_bn, strict=False)  # a callable is called
    assert isinstance(other, _models.SmallCNN)
    described = mo.modeopt_state(restored)["modes"][0]["metadata"]["teacher"]
    assert described["fingerprint"] != mo.modeopt_state(model)["modes"][0]["metadata"]["teacher"]["fingerprint"]
    with pytest.raises(md.DistillError, match="this model is not being distilled"):
        md.attach_teacher(_models.student(), _models.teacher())


def test_the_state_is_json_and_needs_the_plugin_to_restore(tmp_path: Path) -> None:
    model = _distilled({"pairs": PAIRS}, teacher=_models.teacher())
    state = mo.modeopt_state(model)
    json.dumps(state)  # no tensors or objects in the recorded state
    assert state["modes"][0]["metadata"]["adapters"] == {"1": {"in": 8, "out": 16, "dim": 1}}
    assert mo.mode_provider("kd_loss")[0] == "modeopt-distill"
