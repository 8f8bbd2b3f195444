"""Functions on a distilled student: the combined loss of a training step, and attaching the teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modeopt_core import unwrap_model

from .distiller import Distiller, distiller_of
from .errors import DistillError, TeacherMissingError
from .teacher import build_teacher, check_layer_names, check_same_teacher

__all__ = ["attach_teacher", "compute_kd_loss", "is_distilling"]


def _distiller(model: nn.Module) -> Distiller:
    found = distiller_of(unwrap_model(model))
    if found is None:
        raise DistillError(
            "this model is not being distilled: apply the mode first, e.g. "
            "modeopt_core.apply_mode(student, [('kd_loss', config)], mode_kwargs={'teacher': teacher})"
        )
    return found


def is_distilling(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DP/DDP wrapper holds) carries ``kd_loss`` state."""
    return distiller_of(unwrap_model(model)) is not None


def compute_kd_loss(
    model: nn.Module, student_loss: torch.Tensor | float | None = None, *, return_terms: bool = False
) -> Any:
    """The combined distillation loss of the last forward of ``model`` (a DP/DDP wrapper is fine).

    Runs the teacher on the inputs of the last forward, then returns
    ``sum(pair.weight * loss(student output, teacher output)) + student_loss_weight * student_loss``
    as a scalar tensor that backpropagates into the student (and its adapters). The captured outputs
    are released afterwards: one call per forward. Same as ``model.compute_kd_loss(...)`` on the
    unwrapped model.

    Args:
        student_loss: the task loss of the same forward (e.g. cross entropy against the labels).
        return_terms: also return ``{label: unweighted loss}`` of every pair, e.g. for logging.

    Raises:
        DistillError: no forward since the last call, or the student changed its input in place.
        TeacherMissingError: a restored model whose teacher was not attached again.
        ShapeMismatchError: a pair's outputs cannot be compared (names the pair and both shapes).
    """
    return _distiller(model).compute(student_loss, return_terms=return_terms)


def attach_teacher(model: nn.Module, teacher: Any = None, *, strict: bool = True) -> nn.Module:
    """Give a distilled student its teacher (after a restore, or to swap teachers); return the teacher.

    Args:
        teacher: a module or a zero-argument callable returning one. ``None`` calls the factory
            recorded in the ``kd_loss`` config (this imports and runs that code: restoring a
            checkpoint never does it by itself).
        strict: refuse a teacher whose class or architecture differs from the one recorded when the
            mode was applied (:class:`TeacherMismatchError`).

    Raises:
        TeacherMissingError: ``teacher`` is None and no factory was recorded.
        LayerNotFoundError: the teacher lacks a module named by a pair.
    """
    distiller = _distiller(model)
    if distiller.in_place:
        raise DistillError("this model distils from its own subnet (teacher_subnet); there is no teacher to attach")
    if teacher is None:
        factory = distiller.config.teacher
        if factory is None:
            raise TeacherMissingError(
                "no teacher factory was recorded (the teacher was passed as a module): pass it, "
                "attach_teacher(model, teacher)"
            )
        built = build_teacher(factory, f"teacher factory {factory!r}")
    else:
        built = build_teacher(teacher, "teacher")
    if built is unwrap_model(model):
        raise DistillError("the teacher is the student itself; pass a copy (copy.deepcopy(model))")
    check_layer_names(built, [(f"pairs[{i}].teacher", p.teacher_name) for i, p in enumerate(distiller.config.pairs)],
                      "teacher")
    if strict and distiller.teacher_info.get("fingerprint") is not None:
        check_same_teacher(distiller.teacher_info, built)
    distiller.teacher = built
    return built
