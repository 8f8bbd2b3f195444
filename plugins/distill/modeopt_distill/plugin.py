"""Entry point of the distillation plugin (group ``modeopt.plugins``): the ``kd_loss`` and ``export_student`` modes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeopt_core import hookimpl

from .modes import ExportStudentMode, KDLossMode


@hookimpl
def modeopt_register_modes(register: Callable[[Any], None]) -> None:
    register(KDLossMode())
    register(ExportStudentMode())


@hookimpl
def modeopt_autonas_next_modes() -> list[str]:
    """``kd_loss`` may follow the NAS modes (``autonas``, ``fastnas``): it distils a search-space model too."""
    return ["kd_loss"]
