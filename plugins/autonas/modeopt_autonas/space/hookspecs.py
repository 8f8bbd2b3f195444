"""Hook specifications the search-space layer adds to the core's plugin manager (its extension points)."""

from __future__ import annotations

from collections.abc import Callable

from modeopt_core import hookspec

from .layers import LayerType


@hookspec(historic=True)
def modeopt_autonas_register_layers(register: Callable[[LayerType], None]) -> None:
    """Make custom layer types searchable: call ``register(LayerType(...))`` once per type.

    A :class:`~modeopt_autonas.space.LayerType` record holds everything about one layer class: its
    ``spec`` (how channels flow through an instance, for the tied-channel analysis), its
    ``dynamic_class`` (a :class:`~modeopt_autonas.space.DynamicModule` subclass that computes the
    layer on the active channels and exports it) and which rules set its widths. Called once when the
    search-space layer loads and again whenever a plugin registers later (historic hook). See
    ``docs/writing-a-plugin.md``, "Custom searchable layers".
    """


@hookspec
def modeopt_autonas_next_modes() -> list[str]:
    """Names of modes that may directly follow a NAS mode (``autonas``, ``fastnas``, ...).

    By default only ``export_nas`` may follow; a plugin whose mode works on a search-space model
    (distillation, quantization, ...) returns its mode names here.
    """
