"""The ``kd_loss`` mode (distil a student from a teacher) and its export mode ``export_student``."""

from __future__ import annotations

from typing import Any

from torch import nn

from modeopt_core import ConfigError, ConvertError, Metadata, ModeConfig, ModeDescriptor

from ._space import search_space_of
from .config import ExportStudentConfig, KDLossConfig, LayerPair
from .errors import ShapeMismatchError
from .teacher import build_teacher, check_layer_names, describe_teacher

__all__ = ["ExportStudentMode", "KDLossMode"]

# The distiller (with its adapters and losses) is imported where a mode method needs it: every process
# that discovers the plugins registers these modes, and few of them distil.


def _adapter_sizes(index: int, pair: LayerPair, student: tuple[int, ...], teacher: tuple[int, ...]) -> dict[str, int]:
    where = f"pairs[{index}] ({pair.label()})"
    if len(student) != len(teacher) or not -len(student) <= pair.dim < len(student):
        raise ShapeMismatchError(
            f"{where}: an adapter maps channels along dim {pair.dim}, but student {pair.student!r} gives "
            f"{student} and teacher {pair.teacher_name!r} gives {teacher}"
        )
    dim = pair.dim % len(student)
    if [s for i, s in enumerate(student) if i != dim] != [t for i, t in enumerate(teacher) if i != dim]:
        raise ShapeMismatchError(
            f"{where}: student {pair.student!r} gives {student} and teacher {pair.teacher_name!r} gives {teacher}; "
            f"an adapter only bridges dim {pair.dim}, the other dims must agree"
        )
    return {"in": student[dim], "out": teacher[dim], "dim": pair.dim}


def _student_names(config: KDLossConfig) -> list[tuple[str, str]]:
    return [(f"pairs[{i}].student", p.student) for i, p in enumerate(config.pairs)]


def _teacher_names(config: KDLossConfig) -> list[tuple[str, str]]:
    return [(f"pairs[{i}].teacher", p.teacher_name) for i, p in enumerate(config.pairs)]


class KDLossMode(ModeDescriptor):
    """``kd_loss``: the student's forward is unchanged; ``compute_kd_loss`` adds the teacher's terms.

    ``mode_kwargs``: ``teacher`` (a module or a zero-argument callable returning one; used instead of
    the config's factory) and ``dummy_input`` (one probe forward of student and teacher that checks
    every pair's shapes and sizes the adapters). Nothing about the teacher but its description is
    recorded: a restored model needs ``attach_teacher`` (unless the teacher is its own subnet).
    """

    @property
    def name(self) -> str:
        return "kd_loss"

    @property
    def config_class(self) -> type[ModeConfig]:
        return KDLossConfig

    @property
    def next_modes(self) -> set[str] | None:
        return {"export_student"}

    @property
    def export_mode(self) -> str | None:
        return "export_student"

    def _teacher(self, model: nn.Module, config: KDLossConfig, given: Any) -> nn.Module | None:
        if config.teacher_subnet is not None:
            if given is not None:
                raise ConfigError("teacher_subnet distils from the student's own subnet; do not pass mode_kwargs['teacher']")
            search_space_of(model, required=True)
            check_layer_names(model, _teacher_names(config), "student (its own subnet is the teacher)")
            return None
        if given is not None:
            teacher = build_teacher(given, "mode_kwargs['teacher']")
        elif config.teacher is not None:
            teacher = build_teacher(config.teacher, f"teacher factory {config.teacher!r}")
        else:
            raise ConfigError(
                "kd_loss needs a teacher: set 'teacher' to a factory ('package.module:function'), pass "
                "mode_kwargs={'teacher': module}, or set teacher_subnet='max' on a model with a search space"
            )
        if teacher is model:
            raise ConfigError("the teacher is the student itself; pass a copy (copy.deepcopy(model)) or use teacher_subnet")
        check_layer_names(teacher, _teacher_names(config), "teacher")
        return teacher

    def convert(self, model: nn.Module, config: ModeConfig, *, teacher: Any = None, dummy_input: Any = None,
                **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        assert isinstance(config, KDLossConfig)
        from .distiller import Distiller, distiller_of

        if distiller_of(model) is not None:
            raise ConvertError("this model is already being distilled; apply 'export_student' first")
        check_layer_names(model, _student_names(config), "student")
        built = self._teacher(model, config, teacher)
        info = describe_teacher(config, built)
        distiller = Distiller(model, config, built, info, {})
        sizes: dict[str, dict[str, int]] = {}
        if dummy_input is not None:
            for i, (pair, (s, t)) in enumerate(zip(config.pairs, distiller.probe(dummy_input))):
                if pair.adapter:
                    sizes[str(i)] = _adapter_sizes(i, pair, s, t)
                elif s != t:
                    raise ShapeMismatchError(
                        f"pairs[{i}] ({pair.label()}): student {pair.student!r} gives {s} but teacher "
                        f"{pair.teacher_name!r} gives {t}; pair layers of equal shape, or set adapter=True to learn "
                        f"a projection of the student's channels along dim {pair.dim}"
                    )
        else:
            needing = [i for i, p in enumerate(config.pairs) if p.adapter]
            if needing:
                raise ConfigError(
                    f"pairs{needing} ask for an adapter, which is sized by one probe forward: pass "
                    "mode_kwargs={'dummy_input': <a batch the model accepts>}"
                )
        distiller.adapters = sizes
        distiller.install()
        return model, {"teacher": info, "adapters": sizes, "probed": dummy_input is not None}

    def update_for_save(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        # a teacher attached with strict=False may differ from the one described at apply time
        assert isinstance(config, KDLossConfig)
        from .distiller import distiller_of

        distiller = distiller_of(model)
        if distiller is not None and distiller.teacher is not None:
            metadata["teacher"] = describe_teacher(config, distiller.teacher)

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        assert isinstance(config, KDLossConfig)
        check_layer_names(model, _student_names(config), "student")
        if config.teacher_subnet is not None:
            search_space_of(model, required=True)
        sizes = {str(k): {kk: int(vv) for kk, vv in v.items()} for k, v in (metadata.get("adapters") or {}).items()}
        from .distiller import Distiller

        Distiller(model, config, None, dict(metadata.get("teacher") or {}), sizes).install()
        return model


class ExportStudentMode(ModeDescriptor):
    """``export_student``: drop the teacher, the hooks, the adapters and ``compute_kd_loss``.

    The student keeps everything earlier modes gave it (a search space stays, so ``export_nas`` can
    still follow).
    """

    @property
    def name(self) -> str:
        return "export_student"

    @property
    def config_class(self) -> type[ModeConfig]:
        return ExportStudentConfig

    @property
    def is_export_mode(self) -> bool:
        return True

    def convert(self, model: nn.Module, config: ModeConfig, **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        from .distiller import distiller_of

        distiller = distiller_of(model)
        if distiller is None:
            raise ConvertError("this model is not being distilled (no kd_loss state on it); nothing to export")
        return model, {"dropped": distiller.uninstall()}

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        return self.convert(model, config)[0]
