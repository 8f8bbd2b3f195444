"""Entry point of the AutoNAS plugin (group ``modeopt.plugins``): its modes and the search space's hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from modeopt_core import hookimpl

from .space import LAYERS, ExportNASMode, LayerType
from .space import hookspecs as space_hookspecs


def _register_layer(layer_type: LayerType) -> None:
    LAYERS.register(layer_type)


@hookimpl
def modeopt_register_modes(register: Callable[[Any], None]) -> None:
    from .modes import AutoNASMode

    register(AutoNASMode())
    register(ExportNASMode())


@hookimpl
def modeopt_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(space_hookspecs)
    # Historic: plugins registered later still get to add their layers.
    pluginmanager.hook.modeopt_autonas_register_layers.call_historic(kwargs={"register": _register_layer})
