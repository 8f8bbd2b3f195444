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

from .api import attach_teacher, compute_kd_loss, is_distilling
from .config import LOSSES, ExportStudentConfig, KDLossConfig, LayerPair
from .errors import DistillError, LayerNotFoundError, ShapeMismatchError, TeacherMismatchError, TeacherMissingError
from .modes import ExportStudentMode, KDLossMode

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
