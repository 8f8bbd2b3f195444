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

    @property
    def supports_meta_restore(self) -> bool:
        """Whether :meth:`restore` works on a model whose tensors are on the ``meta`` device (no data).

        ``modeopt_core.restore`` first replays the recorded modes on such a data-less copy to check
        that the checkpoint fits before touching the real model (the hook's ``dry_run`` pass). Return
        False when restore must read tensor values; the check then runs on the real model, which is
        rolled back if the checkpoint does not fit.
        """
        return True

    @property
    def next_modes_hint(self) -> str:
        """Appended to chain errors about what may follow this mode (e.g. how plugins extend the list)."""
        return ""

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

    def compact_closed_metadata(self, closed_metadata: Metadata, metadata: Metadata) -> Metadata | None:
        """Export modes only: a smaller replacement for the metadata of the mode this export closes.

        Called by the core right after this export mode's :meth:`convert` (and its :meth:`restore`)
        with the closed mode's recorded metadata and this mode's new metadata. Return None to keep it
        (the default), or the metadata to record instead, e.g. without per-weight masks that are baked
        into the exported weights. The closed mode's :meth:`restore` then receives the compacted
        metadata on restore and must rebuild a model that this export mode's restore turns into the
        saved one (``docs/writing-a-plugin.md`` has a worked example).
        """
        return None

    def summarize(self, config: dict[str, Any], metadata: Metadata) -> str | None:
        """A one-line summary of a recorded use of this mode for ``modeopt inspect`` (None: no summary)."""
        return None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<mode {self.name!r} ({type(self).__name__})>"
