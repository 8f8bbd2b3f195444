"""Entry point of the AutoNAS plugin (group ``modeopt.plugins``): its modes and extension hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from modeopt_core import hookimpl

from . import hookspecs
from .layers import LAYERS
from .modes import AutoNASMode, ExportNASMode


def _register_layer(layer_cls: type, spec_fn: Callable[..., Any], dynamic_cls: type) -> None:
    LAYERS.register_spec(layer_cls, spec_fn)
    LAYERS.register_dynamic(layer_cls, dynamic_cls)


@hookimpl
def modeopt_register_modes(register: Callable[[Any], None]) -> None:
    register(AutoNASMode())
    register(ExportNASMode())


@hookimpl
def modeopt_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    # Historic: plugins registered later still get to add their layers.
    pluginmanager.hook.modeopt_autonas_register_layers.call_historic(kwargs={"register": _register_layer})
