"""The search space of a NAS-converted student, reached through ``modeopt_autonas``'s public API (optional)."""

from __future__ import annotations

from typing import Any

from torch import nn

from modeopt_core import ConfigError

__all__ = ["search_space_of"]


def search_space_of(model: nn.Module, *, required: bool = False) -> Any | None:
    """The live search space of ``model`` (a ``modeopt_autonas.SearchSpace``), or None.

    Raises:
        ConfigError: with ``required``, when the model has none or the AutoNAS plugin is not installed.
    """
    try:
        from modeopt_autonas import get_search_space, has_search_space
    except ImportError:
        if required:
            raise ConfigError(
                "teacher_subnet needs the search space of the NAS plugins: pip install modeopt-autonas, then apply "
                "'autonas' or 'fastnas' before 'kd_loss'"
            ) from None
        return None
    if has_search_space(model):
        return get_search_space(model)
    if required:
        raise ConfigError(
            "teacher_subnet distils the student from its own largest subnet, but this model has no search space: "
            "apply 'autonas' (or 'fastnas') first, or give a separate teacher"
        )
    return None
