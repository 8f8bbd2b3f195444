"""Entry point of the FastNAS plugin (group ``modeopt.plugins``): the ``fastnas`` mode and CLI commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeopt_core import hookimpl

from .mode import FastNASMode


@hookimpl
def modeopt_plugin_requires() -> list[str]:
    # the search space (and the export_nas mode that closes fastnas) comes with the AutoNAS plugin
    return ["autonas"]


@hookimpl
def modeopt_register_modes(register: Callable[[Any], None]) -> None:
    register(FastNASMode())


@hookimpl
def modeopt_register_commands(register: Callable[..., None]) -> None:
    from . import cli

    register("prune", cli.PRUNE_HELP, cli.configure_prune, cli.run_prune)
    register("demo", cli.DEMO_HELP, cli.configure_demo, cli.run_demo)
