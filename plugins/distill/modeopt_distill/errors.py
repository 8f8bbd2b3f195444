"""Errors of the distillation plugin; all derive from ``modeopt_core.ModeoptError``."""

from __future__ import annotations

from modeopt_core import ConfigError, ModeoptError

__all__ = ["DistillError", "LayerNotFoundError", "ShapeMismatchError", "TeacherMismatchError", "TeacherMissingError"]


class DistillError(ModeoptError):
    """A distillation step cannot run (no forward to distill from, a model that is not distilling, ...)."""


class TeacherMissingError(DistillError):
    """The distilled model has no teacher (after a restore): attach one with ``attach_teacher``."""


class TeacherMismatchError(DistillError):
    """The teacher attached after a restore is not the one the checkpoint recorded."""


class LayerNotFoundError(ConfigError):
    """A layer pair names a module the student or the teacher does not have."""


class ShapeMismatchError(ConfigError):
    """The two outputs of a layer pair cannot be compared (different shapes, not a tensor, ...)."""
