"""``ModeDescriptor``: the contract of a mode, one unit of model transformation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from torch import nn

from .config import ModeConfig
from .errors import SearchError

if TYPE_CHECKING:
    from .searcher import BaseSearcher

__all__ = ["Metadata", "ModeDescriptor"]

Metadata = dict[str, Any]


class ModeDescriptor(ABC):
    """Describes a mode: its name, config, chaining rules and entry points.

    Subclass it, implement ``name``, ``config_class``, ``convert`` and ``restore``, and contribute an
    instance from a plugin's ``modeopt_register_modes`` hook. Names are persisted in checkpoints, so a
    name must never change once released.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """Unique, stable identifier of the mode."""

    @property
    @abstractmethod
    def config_class(self) -> type[ModeConfig]:
        """The pydantic config class validating this mode's config."""

    @property
    def next_modes(self) -> set[str] | None:
        """Modes allowed to follow directly: None = any; a set = only these; empty = none."""
        return None

    @property
    def next_prohibited_modes(self) -> set[str]:
        """Modes that may not follow directly."""
        return set()

    @property
    def export_mode(self) -> str | None:
        """Name of the export mode that must later close this mode (pushed on the export stack)."""
        return None

    @property
    def is_export_mode(self) -> bool:
        """True for modes that close another mode (pop the export stack)."""
        return False

    @property
    def search_algorithm(self) -> type[BaseSearcher]:
        """The searcher class of this mode."""
        raise SearchError(f"mode {self.name!r} has no search algorithm; apply a searchable mode first")

    @property
    def accepted_mode_kwargs(self) -> frozenset[str] | None:
        """Keys ``convert`` accepts in ``mode_kwargs`` (None: any; ``apply_mode`` rejects others)."""
        return None

    @property
    def save_mode_in_state(self) -> bool:
        """Whether the mode is recorded in saved state (False: it must be re-applied by hand)."""
        return True

    @abstractmethod
    def convert(self, model: nn.Module, config: ModeConfig, **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        """Apply the mode; return the (possibly new) model and JSON/tensor metadata to record.

        Must not mutate tensor data in place: on failure the framework rolls back module structure
        and attributes, not parameter values.
        """

    @abstractmethod
    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """Re-apply the mode on a fresh model from recorded config and metadata, deterministically."""

    def update_for_save(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        """Update ``metadata`` in place right before the state is taken (last mode only)."""

    def update_for_new_mode(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        """Update ``metadata`` in place right before another mode is applied on top."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<mode {self.name!r} ({type(self).__name__})>"
