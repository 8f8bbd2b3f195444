"""Configs of the ``kd_loss`` and ``export_student`` modes (strict pydantic, JSON-serialisable)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modeopt_core import ModeConfig

__all__ = ["LOSSES", "ExportStudentConfig", "KDLossConfig", "LayerPair"]

#: the loss functions a layer pair can use (see ``docs/distill.md``)
LOSSES = ("kl_div", "mse", "cosine")
LossName = Literal["kl_div", "mse", "cosine"]

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class LayerPair(BaseModel):
    """One distillation term: an output of the student compared with an output of the teacher.

    ``student``/``teacher`` are qualified module names (as in ``model.named_modules()``); the empty
    name ``""`` is the model itself, i.e. its output (the logits). The term is
    ``weight * loss(student output, teacher output)``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    student: str = Field(default="", description="module of the student whose output is matched ('' = the model's output)")
    teacher: str | None = Field(default=None, description="module of the teacher it is matched to (default: the same name)")
    loss: LossName = Field(default="kl_div", description="kl_div (softened class distributions), mse or cosine")
    weight: float = Field(default=1.0, ge=0, description="multiplier of this term in the combined loss")
    temperature: float | None = Field(default=None, gt=0, description="kl_div only: overrides the config's temperature")
    dim: int = Field(default=1, description="class dim (kl_div), feature dim (cosine) and channel dim (adapter)")
    output: str | int | None = Field(
        default=None, description="item of a structured output: tuple index, dict key or attribute (e.g. 'logits')"
    )
    teacher_output: str | int | None = Field(default=None, description="the teacher's item when it differs from 'output'")
    adapter: bool = Field(
        default=False,
        description="learn a linear projection of the student's channels (along dim) onto the teacher's; needs "
        "mode_kwargs['dummy_input'] to size it, is trained with the student and dropped by export_student",
    )

    @property
    def teacher_name(self) -> str:
        """The teacher module's name (the student's when not given)."""
        return self.student if self.teacher is None else self.teacher

    @property
    def teacher_item(self) -> str | int | None:
        """The item selected from the teacher module's output."""
        return self.output if self.teacher_output is None else self.teacher_output

    @model_validator(mode="after")
    def _temperature_for_kl_only(self) -> LayerPair:
        if self.temperature is not None and self.loss != "kl_div":
            raise ValueError(f"'temperature' applies to loss 'kl_div' only, not {self.loss!r}; remove it")
        return self

    def label(self) -> str:
        """A short readable name of the term, e.g. ``output kl_div`` or ``layer3->layer3 mse``."""
        student = self.student or "output"
        teacher = self.teacher_name or "output"
        pair = student if teacher == student else f"{student}->{teacher}"
        item = "" if self.output is None else f"[{self.output!r}]"
        return f"{pair}{item} {self.loss}"


class KDLossConfig(ModeConfig):
    """Config of the ``kd_loss`` mode.

    The teacher is given either by ``teacher`` (an importable ``"package.module:function"`` called
    without arguments), by ``mode_kwargs={"teacher": module_or_callable}`` (not recorded), or, for
    a model with a search space, as ``teacher_subnet`` (the student's own largest subnet).
    """

    teacher: str | None = Field(
        default=None,
        description="factory of the teacher, 'package.module:function' (called without arguments); recorded in "
        "checkpoints, but only called by apply_mode or attach_teacher(), never by restore",
    )
    teacher_subnet: Literal["max", "original"] | None = Field(
        default=None,
        description="in-place distillation of a supernet: the teacher is the student's own search space at this "
        "subnet (needs a model converted by autonas/fastnas)",
    )
    pairs: list[LayerPair] = Field(
        default_factory=lambda: [LayerPair()], min_length=1, description="the distillation terms"
    )
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature of kl_div terms (their loss is scaled by T^2)")
    student_loss_weight: float = Field(
        default=1.0, ge=0, description="multiplier of the student_loss passed to compute_kd_loss (the task loss)"
    )
    teacher_eval: bool | None = Field(
        default=None,
        description="run the teacher in eval mode (its flags are put back after); default: True for a separate "
        "teacher, False for teacher_subnet (batch statistics, as in supernet training)",
    )
    teacher_no_grad: bool = Field(default=True, description="run the teacher under torch.no_grad()")

    @field_validator("teacher")
    @classmethod
    def _factory_reference(cls, value: str | None) -> str | None:
        if value is not None and not _FACTORY.match(value):
            raise ValueError(
                f"{value!r} is not a factory reference: use 'package.module:function' (a function called without "
                "arguments that returns the teacher), or pass the module itself as mode_kwargs={'teacher': ...}"
            )
        return value

    @model_validator(mode="after")
    def _one_teacher_source(self) -> KDLossConfig:
        if self.teacher is not None and self.teacher_subnet is not None:
            raise ValueError("give either 'teacher' (a factory) or 'teacher_subnet' (the student's own subnet), not both")
        return self

    def resolved_teacher_eval(self) -> bool:
        """Whether the teacher runs in eval mode (see ``teacher_eval``)."""
        return self.teacher_subnet is None if self.teacher_eval is None else self.teacher_eval


class ExportStudentConfig(ModeConfig):
    """Config of ``export_student`` (no options)."""
