"""Knowledge distillation for modeopt: the ``kd_loss`` mode and its export mode ``export_student``.

Typical use (see ``docs/distill.md``)::

    import modeopt_core as mo

    student = mo.apply_mode(student, [("kd_loss", {"temperature": 4.0})], mode_kwargs={"teacher": teacher})
    for x, y in loader:
        out = student(x)                                   # the student's outputs, as before
        loss = student.compute_kd_loss(student_loss=F.cross_entropy(out, y))
        loss.backward(); opt.step(); opt.zero_grad()
    student = mo.export(student)                           # export_student: the plain student again

Users never need to import this package to use the modes (the entry point registers them); the
functions here are for DDP-wrapped students and for re-attaching a teacher after a restore.
"""

from __future__ import annotations

import typing as _typing

from modeopt_core.sdk import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from .api import attach_teacher, compute_kd_loss, is_distilling
    from .config import LOSSES, ExportStudentConfig, KDLossConfig, LayerPair
    from .errors import DistillError, LayerNotFoundError, ShapeMismatchError, TeacherMismatchError, TeacherMissingError
    from .modes import ExportStudentMode, KDLossMode

#: the submodule defining each public name (loaded on first access: plugin discovery imports this
#: package in every process, and few of them distil)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "api": ("attach_teacher", "compute_kd_loss", "is_distilling"),
    "config": ("LOSSES", "ExportStudentConfig", "KDLossConfig", "LayerPair"),
    "errors": ("DistillError", "LayerNotFoundError", "ShapeMismatchError", "TeacherMismatchError", "TeacherMissingError"),
    "modes": ("ExportStudentMode", "KDLossMode"),
}

if not _typing.TYPE_CHECKING:
    __getattr__, __dir__ = _lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, ()
    )

__all__ = [
    "LOSSES",
    "DistillError",
    "ExportStudentConfig",
    "ExportStudentMode",
    "KDLossConfig",
    "KDLossMode",
    "LayerNotFoundError",
    "LayerPair",
    "ShapeMismatchError",
    "TeacherMismatchError",
    "TeacherMissingError",
    "attach_teacher",
    "compute_kd_loss",
    "is_distilling",
]
