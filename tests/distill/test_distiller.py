"""compute_kd_loss: the combined loss of the last forward, how the teacher runs, and its errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeopt_core as mo
import modeopt_distill as md
from tests.distill import _models
from tests.distill._models import INPUT, batch


def _kd(model: nn.Module, teacher: nn.Module, config: dict, **kwargs: object) -> nn.Module:
    return mo.apply_mode(model, [("kd_loss", config)], mode_kwargs={"teacher": teacher, **kwargs})


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)


def test_combined_loss_is_the_weighted_sum_of_the_terms(student: nn.Module, teacher: nn.Module) -> None:
    config = {"temperature": 2.0, "student_loss_weight": 0.5, "pairs": [
        {"weight": 0.7},
        {"student": "features", "loss": "mse", "weight": 0.3, "adapter": True},
        {"student": "head", "teacher": "head", "loss": "cosine", "weight": 0.2},
    ]}
    model = _kd(student, teacher, config, dummy_input=torch.zeros(INPUT))
    x, y = batch(4)
    out = model(x)
    ce = F.cross_entropy(out, y)
    total, terms = model.compute_kd_loss(student_loss=ce, return_terms=True)
    with torch.no_grad():
        t_out, t_feat = teacher(x), teacher.features(x)
    p_t = F.softmax(t_out / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(out / 2, 1))).sum(1).mean() * 4
    mse = F.mse_loss(F.conv2d(_features(model, x), model.modeopt_kd_adapter1_weight[:, :, None, None],
                              model.modeopt_kd_adapter1_bias), t_feat)
    cos = (1 - F.cosine_similarity(out, t_out, dim=1)).mean()
    assert list(terms) == ["output kl_div", "features mse", "head cosine"]
    for got, want in zip(terms.values(), (kl, mse, cos)):
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(total, 0.7 * kl + 0.3 * mse + 0.2 * cos + 0.5 * ce, atol=1e-5)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())  # student and adapter
    assert all(p.grad is None for p in teacher.parameters())  # no_grad teacher


def test_the_module_function_works_through_dp_wrappers(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {})
    wrapped = nn.DataParallel(model)  # on CPU it simply calls the module
    x, _ = batch()
    wrapped(x)
    via_function = md.compute_kd_loss(wrapped)
    model(x)
    assert torch.equal(via_function, model.compute_kd_loss())


def test_teacher_runs_in_eval_under_no_grad_and_keeps_its_flags(student: nn.Module, teacher: nn.Module) -> None:
    teacher.train()
    seen: list[tuple[bool, bool]] = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    model = _kd(student, teacher, {})
    x, _ = batch(4)
    out = model(x)
    assert seen == []  # a forward without a loss costs no teacher compute
    loss = model.compute_kd_loss()
    assert seen == [(False, False)] and teacher.training and all(m.training for m in teacher.modules())
    with torch.no_grad():
        expected = md.losses.kd_term("kl_div", out, teacher.eval()(x), temperature=1.0, dim=1)
    assert torch.allclose(loss, expected)


def test_teacher_in_train_mode_with_gradients_when_asked(student: nn.Module, teacher: nn.Module) -> None:
    teacher.train()
    model = _kd(student, teacher, {"teacher_eval": False, "teacher_no_grad": False})
    x, _ = batch(4)
    out = model(x)
    loss = model.compute_kd_loss()
    ref_teacher = copy.deepcopy(teacher)
    assert torch.allclose(loss, md.losses.kd_term("kl_div", out, ref_teacher.train()(x), temperature=1.0, dim=1))
    loss.backward()
    assert all(p.grad is not None for p in teacher.parameters())


def test_outputs_are_released_after_each_loss(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {})
    with pytest.raises(md.DistillError, match="no forward to distil from: call the model on a batch first"):
        model.compute_kd_loss()
    model(batch()[0])
    model.compute_kd_loss()
    with pytest.raises(md.DistillError, match="no forward to distil from"):
        model.compute_kd_loss()


def test_the_loss_uses_the_last_forward(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {})
    first, second = batch(seed=1)[0], batch(seed=2)[0]
    model(first)
    out = model(second)
    with torch.no_grad():
        expected = md.losses.kd_term("kl_div", out, teacher(second), temperature=1.0, dim=1)
    assert torch.allclose(model.compute_kd_loss(), expected)


def test_structured_outputs_are_selected_by_key_or_index() -> None:
    torch.manual_seed(0)
    student, teacher = _models.DictOutput(8), _models.DictOutput(8).eval()
    model = _kd(student, teacher, {"pairs": [{"output": "logits"}, {"student": "body.features", "loss": "mse"}]},
                dummy_input=torch.zeros(INPUT))
    x, _ = batch()
    out = model(x)
    assert set(out) == {"logits", "hidden"}  # the student's own outputs
    _, terms = model.compute_kd_loss(return_terms=True)
    with torch.no_grad():
        t = teacher(x)
    assert torch.allclose(terms["output['logits'] kl_div"],
                          md.losses.kd_term("kl_div", out["logits"], t["logits"], temperature=1.0, dim=1))
    assert torch.allclose(terms["body.features mse"], F.mse_loss(out["hidden"][0], t["hidden"][0]))


def test_a_tuple_output_needs_an_index() -> None:
    torch.manual_seed(0)
    with pytest.raises(md.ShapeMismatchError, match=r"the output is a tuple, not a tensor; set 'output' .* to the "
                                                    "index of the tensor"):
        _kd(_models.DictOutput(8), _models.DictOutput(8), {"pairs": [{"output": "hidden"}]},
            dummy_input=torch.zeros(INPUT))
    model = _kd(_models.DictOutput(8), _models.DictOutput(8), {"pairs": [{"output": "hidden"}]})
    model(batch()[0])
    with pytest.raises(md.ShapeMismatchError, match="pairs\\[0\\] \\(output\\['hidden'\\] kl_div\\), student module ''"):
        model.compute_kd_loss()


def test_a_module_that_runs_twice_is_refused() -> None:
    torch.manual_seed(0)
    model = _kd(_models.Twice(), _models.Twice(), {"pairs": [{"student": "block", "loss": "mse"}]})
    model(torch.randn(2, 4))
    with pytest.raises(md.ShapeMismatchError, match="student module 'block' ran 2 times in one forward"):
        model.compute_kd_loss()


def test_a_student_changing_its_input_in_place_is_refused() -> None:
    torch.manual_seed(0)
    model = _kd(_models.InplaceInput(), nn.Linear(4, 3), {})
    model(torch.randn(2, 4))
    with pytest.raises(md.DistillError, match="the student modified its input in place"):
        model.compute_kd_loss()


def test_a_teacher_on_another_device_is_named(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher.to("meta"), {})
    model(batch()[0])
    with pytest.raises(md.DistillError, match="the teacher is on meta but the student's input is on cpu; move the "
                                              "teacher"):
        model.compute_kd_loss()


def test_shape_mismatch_without_a_probe_is_found_at_the_first_loss(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {"pairs": [{"student": "features", "loss": "mse"}]})
    model(batch()[0])
    with pytest.raises(md.ShapeMismatchError, match=r"student 'features' gives \(2, 8, 4, 4\) but teacher 'features' "
                                                    r"gives \(2, 16, 4, 4\)"):
        model.compute_kd_loss()


def test_a_copied_student_shares_the_teacher_but_not_the_captures(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {"pairs": [{}, {"student": "features", "loss": "mse", "adapter": True}]},
                dummy_input=torch.zeros(INPUT))
    twin = copy.deepcopy(model)
    x, _ = batch()
    twin(x)
    with pytest.raises(md.DistillError, match="no forward"):
        model.compute_kd_loss()  # the twin's forward is not the original's
    model(x)
    assert torch.equal(twin.compute_kd_loss(), model.compute_kd_loss())
    assert twin.modeopt_kd_adapter1_weight is not model.modeopt_kd_adapter1_weight
    assert md.attach_teacher(twin, teacher) is teacher


def test_inference_mode_forwards_still_work(student: nn.Module, teacher: nn.Module) -> None:
    model = _kd(student, teacher, {}).eval()
    with torch.inference_mode():
        x = batch()[0].clone()
        out = model(x)
        loss = model.compute_kd_loss()  # e.g. a validation loss
    assert out.shape == (2, 10) and float(loss) >= 0
