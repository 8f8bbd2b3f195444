"""Adapters: a seeded linear map of channels; narrower inputs use its leading columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeopt_core as mo
from modeopt_distill import ShapeMismatchError
from modeopt_distill.adapters import adapter_names, new_adapter, project


def test_projects_along_dim_like_a_1x1_convolution() -> None:
    weight, bias = new_adapter(3, 5, seed=4)
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(project(x, weight, bias, 1), F.conv2d(x, weight[:, :, None, None], bias), atol=1e-6)
    tokens = torch.randn(2, 7, 3)
    assert torch.allclose(project(tokens, weight, bias, -1), F.linear(tokens, weight, bias))


def test_seeded_initialisation_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = new_adapter(4, 6, seed=1), new_adapter(4, 6, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], new_adapter(4, 6, seed=2)[0])
    assert new_adapter(4, 6, seed=0, device=torch.device("meta"))[0].is_meta


def test_a_narrower_subnet_uses_the_leading_columns() -> None:
    weight, bias = new_adapter(6, 4, seed=0)
    x = torch.randn(3, 2)
    assert torch.allclose(project(x, weight, bias, 1), F.linear(x, weight[:, :2], bias))
    with pytest.raises(ShapeMismatchError, match="has 7 channels along dim 1, but its adapter was sized for 6"):
        project(torch.randn(3, 7), weight, bias, 1)


def test_adapters_are_parameters_of_the_root_not_submodules() -> None:
    """A submodule would break containers such as nn.Sequential, which run every child they hold."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    children = list(student.children())
    student = mo.apply_mode(student, [("kd_loss", {"pairs": [{"student": "1", "loss": "mse", "adapter": True}]})],
                            mode_kwargs={"teacher": teacher, "dummy_input": torch.zeros(1, 4)})
    assert list(student.children()) == children
    weight_name, bias_name = adapter_names("0")
    assert dict(student.named_parameters())[weight_name].shape == (8, 3)
    student(torch.randn(5, 4))
    student.compute_kd_loss().backward()
    assert student.get_parameter(weight_name).grad is not None and student.get_parameter(bias_name).grad is not None
    student.to(torch.float64)  # the adapter follows the student
    student(torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError):  # the teacher does not (it is not part of the student)
        student.compute_kd_loss()
