"""The exception hierarchy: every error modeopt raises on purpose derives from ``ModeoptError``."""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "ConfigError",
    "ConstraintError",
    "ConvertError",
    "ModeChainError",
    "ModeNotFoundError",
    "ModeRegistrationError",
    "ModeoptError",
    "PluginError",
    "SearchError",
    "StateError",
]


class ModeoptError(Exception):
    """Root of every error raised deliberately by modeopt and its plugins."""


class ArgumentError(ModeoptError, TypeError):
    """A function got an argument of the wrong type; the message names the argument and what to pass."""


class ModeNotFoundError(ModeoptError, KeyError):
    """A mode name is not registered; the message lists the available modes."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModeRegistrationError(ModeoptError):
    """A mode could not be registered (e.g. its name is already taken by another provider)."""


class PluginError(ModeoptError):
    """A plugin could not be loaded or registered."""


class ModeChainError(ModeoptError):
    """A mode may not follow the modes already applied (chain or export-stack rules)."""


class ConfigError(ModeoptError, ValueError):
    """A mode or search config is invalid; the message names the field path and accepted values."""


class ConvertError(ModeoptError, RuntimeError):
    """A mode's convert or restore failed; the model was left unchanged."""


class StateError(ModeoptError):
    """The recorded modeopt state of a model is missing, inconsistent or unsupported."""


class CheckpointError(ModeoptError):
    """A checkpoint file is missing, truncated, corrupted, foreign or incompatible."""


class SearchError(ModeoptError):
    """A search could not run (no searcher for the mode, bad search config, ...)."""


class ConstraintError(SearchError, ValueError):
    """Constraints are malformed or cannot be satisfied within the search space."""
