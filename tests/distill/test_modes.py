"""The kd_loss and export_student modes: what they change, chain rules, typed errors with the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modeopt_core as mo
import modeopt_distill as md
from tests.distill._models import INPUT, batch, hook_count
from tests.distill._models import student as make_student


def _snapshot(model: nn.Module) -> tuple:
    return (sorted(model.__dict__), hook_count(model), {k: v.clone() for k, v in model.state_dict().items()},
            [type(m) for m in model.modules()])


def _same(model: nn.Module, snap: tuple) -> bool:
    keys, hooks, state, types = snap
    now = model.state_dict()
    return (sorted(model.__dict__) == keys and hook_count(model) == hooks and now.keys() == state.keys()
            and all(torch.equal(now[k], v) for k, v in state.items()) and [type(m) for m in model.modules()] == types)


def test_forward_is_unchanged_and_the_teacher_is_not_part_of_the_student(student: nn.Module,
                                                                         teacher: nn.Module) -> None:
    x, _ = batch()
    keys = list(student.state_dict())
    params = [id(p) for p in student.parameters()]
    before = student(x)
    model = mo.apply_mode(student, [("kd_loss", {})], mode_kwargs={"teacher": teacher})
    assert model is student and mo.applied_modes(model) == ["kd_loss"]
    assert torch.equal(model(x), before)
    assert list(model.state_dict()) == keys  # no teacher weights: not in checkpoints, not in DDP
    assert [id(p) for p in model.parameters()] == params
    assert all(not any(p is q for q in teacher.parameters()) for p in model.parameters())
    assert md.is_distilling(model) and callable(model.compute_kd_loss)


def test_export_student_leaves_the_plain_student(student: nn.Module, teacher: nn.Module) -> None:
    plain = _snapshot(copy.deepcopy(student))
    model = mo.apply_mode(student, [("kd_loss", {"pairs": [{}, {"student": "features", "loss": "mse",
                                                                 "adapter": True}]})],
                          mode_kwargs={"teacher": teacher, "dummy_input": torch.zeros(INPUT)})
    assert {"modeopt_kd_adapter1_weight", "modeopt_kd_adapter1_bias"} <= set(model.state_dict())
    model = mo.export(model)
    assert mo.applied_modes(model) == ["kd_loss", "export_student"]
    assert not md.is_distilling(model) and "compute_kd_loss" not in model.__dict__
    keys, hooks, state, types = plain
    assert sorted(k for k in model.__dict__ if k != "_modeopt_state") == keys
    assert hook_count(model) == hooks and list(model.state_dict()) == list(state)
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("chain", [
    ["kd_loss", "export_student"],
    ["kd_loss", "export_student", "kd_loss", "export_student"],
])
def test_valid_chains_on_a_plain_model(chain: list[str], teacher: nn.Module) -> None:
    model = mo.apply_mode(make_student(), chain, mode_kwargs={"teacher": teacher})
    assert mo.applied_modes(model) == chain


@pytest.mark.parametrize(("chain", "message"), [
    (["export_student"], "cannot apply export mode 'export_student' now: no mode is waiting for an export"),
    (["kd_loss", "kd_loss"], "cannot apply 'kd_loss' after 'kd_loss': only ['export_student'] may follow it"),
    (["kd_loss", "export_student", "export_student"], "cannot apply export mode 'export_student' now"),
])
def test_invalid_chains_are_typed_errors_and_change_nothing(chain: list[str], message: str,
                                                            teacher: nn.Module) -> None:
    model = make_student()
    snap = _snapshot(model)
    with pytest.raises(mo.ModeChainError) as info:
        mo.apply_mode(model, chain, mode_kwargs={"teacher": teacher})
    assert message in str(info.value)
    assert _same(model, snap) and mo.applied_modes(model) == []


def _apply(model: nn.Module, config: dict, **kwargs: object) -> nn.Module:
    return mo.apply_mode(model, [("kd_loss", config)], mode_kwargs=kwargs)


@pytest.mark.parametrize(("config", "kwargs", "error", "message"), [
    ({"pairs": [{"student": "featurez"}]}, {}, md.LayerNotFoundError,
     "pairs[0].student: the student has no module 'featurez'. Close names: ['features"),
    ({"pairs": [{}, {"student": "features", "teacher": "features.9"}]}, {}, md.LayerNotFoundError,
     "pairs[1].teacher: the teacher has no module 'features.9'"),
    ({"pairs": [{"student": "features", "loss": "mse"}]}, {"dummy_input": torch.zeros(INPUT)},
     md.ShapeMismatchError, "pairs[0] (features mse): student 'features' gives (2, 8, 4, 4) but teacher 'features' "
     "gives (2, 16, 4, 4); pair layers of equal shape, or set adapter=True"),
    ({"pairs": [{"student": "features", "teacher": "head", "loss": "mse", "adapter": True}]},
     {"dummy_input": torch.zeros(INPUT)}, md.ShapeMismatchError,
     "an adapter maps channels along dim 1, but student 'features' gives (2, 8, 4, 4) and teacher 'head' gives (2, 10)"),
    ({"pairs": [{"student": "features", "loss": "mse", "adapter": True}]}, {}, mo.ConfigError,
     "pairs[0] ask for an adapter, which is sized by one probe forward: pass mode_kwargs={'dummy_input'"),
    ({"pairs": [{"output": "logits"}]}, {"dummy_input": torch.zeros(INPUT)}, md.ShapeMismatchError,
     "the output (Tensor) has no item or attribute 'logits'"),
    ({}, {"teacher": None}, mo.ConfigError, "kd_loss needs a teacher: set 'teacher' to a factory"),
    ({"teacher": "tests.distill._models:no_such_factory"}, {"teacher": None}, mo.ConfigError,
     "teacher factory 'tests.distill._models:no_such_factory': 'tests.distill._models' has no attribute"),
    ({"teacher": "no_such_module_xyz:f"}, {"teacher": None}, mo.ConfigError, "cannot import 'no_such_module_xyz'"),
    ({"teacher": "tests.distill._models:INPUT"}, {"teacher": None}, mo.ConfigError, "is not callable"),
    ({"teacher": "tests.distill._models:batch"}, {"teacher": None}, mo.ConfigError,
     "must be (or return) a torch.nn.Module, got tuple"),
    ({"teacher_subnet": "max"}, {"teacher": None}, mo.ConfigError, "this model has no search space"),
])
def test_bad_configs_are_typed_errors_naming_the_layer_and_change_nothing(
    config: dict, kwargs: dict, error: type[Exception], message: str, teacher: nn.Module
) -> None:
    model = make_student()
    snap = _snapshot(model)
    kwargs = {"teacher": teacher, **kwargs}
    with pytest.raises(error) as info:
        _apply(model, config, **kwargs)
    assert message in str(info.value)
    assert _same(model, snap) and mo.applied_modes(model) == [] and not md.is_distilling(model)


def test_the_student_cannot_be_its_own_teacher(student: nn.Module) -> None:
    with pytest.raises(mo.ConfigError, match="the teacher is the student itself"):
        _apply(student, {}, teacher=student)


def test_teacher_from_a_factory_reference_is_built_by_apply_mode() -> None:
    from tests.distill import _models

    calls = _models.FACTORY_CALLS["teacher"]
    model = _apply(make_student(), {"teacher": "tests.distill._models:teacher"})
    assert _models.FACTORY_CALLS["teacher"] == calls + 1
    info = mo.modeopt_state(model)["modes"][0]["metadata"]["teacher"]
    assert info["source"] == "factory" and info["factory"] == "tests.distill._models:teacher"
    assert info["class"] == "tests.distill._models.SmallCNN" and info["num_params"] > 0


def test_a_callable_teacher_in_mode_kwargs_is_called(student: nn.Module) -> None:
    from tests.distill import _models

    model = _apply(student, {}, teacher=_models.teacher_no_bn)
    x, _ = batch()
    model(x)
    assert float(model.compute_kd_loss().detach()) > 0
