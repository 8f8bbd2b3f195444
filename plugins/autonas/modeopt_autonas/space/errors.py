"""Errors raised by the NAS search space (hparams, conversion, selection, export)."""

from __future__ import annotations

from modeopt_core import ConfigError, ConvertError, ModeoptError

__all__ = [
    "DynamicAttributeError",
    "HparamValueError",
    "SearchSpaceError",
    "SpaceExportedError",
    "StructureMismatchError",
    "SubnetConfigError",
]


class SearchSpaceError(ModeoptError):
    """Root of every error raised by the search space."""


class HparamValueError(SearchSpaceError, ValueError):
    """A value is not one of an hparam's choices, or a choice set is malformed."""


class SubnetConfigError(SearchSpaceError, ConfigError):
    """A subnet config names unknown hparams, misses configurable ones, or holds invalid values."""


class StructureMismatchError(SearchSpaceError, ConvertError):
    """A ``SpaceStructure`` does not fit the model it is applied to; the model is left unchanged."""


class SpaceExportedError(SearchSpaceError, RuntimeError):
    """The search space was exported in place; its model is now a plain model."""


class DynamicAttributeError(SearchSpaceError, AttributeError):
    """A subnet-dependent attribute of a dynamic module was assigned directly."""
