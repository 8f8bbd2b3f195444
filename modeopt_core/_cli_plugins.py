"""``modeopt plugins``: every plugin with its distribution, version, modes, hooks and commands; failures."""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Any

from . import __version__
from ._cli_output import print_json, wrap_pairs
from .errors import ModeoptError
from .plugins import _ENV_DISABLE, _ENV_ONLY, list_plugins, plugin_failures
from .registry import _REGISTRY

__all__ = ["configure", "modes_by_plugin", "plugins_report", "run"]


def modes_by_plugin() -> dict[str, list[str]]:
    """Plugin name -> the mode names it provides, sorted.

    Raises:
        ModeRegistrationError: the plugins' modes clash (the registry cannot be built).
    """
    out: dict[str, list[str]] = defaultdict(list)
    for name in _REGISTRY.names():
        out[_REGISTRY.plugin_of(name)].append(name)
    return dict(out)


def _autoload_setting() -> dict[str, Any]:
    disabled = os.environ.get(_ENV_DISABLE, "").strip().lower() in ("1", "true", "yes")
    only = [s.strip() for s in os.environ.get(_ENV_ONLY, "").split(",") if s.strip()]
    return {"enabled": not disabled, "only": only}


def plugins_report(commands_by_plugin: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The JSON-able data behind ``modeopt plugins``."""
    registry_error = None
    try:
        modes = modes_by_plugin()
    except ModeoptError as exc:
        modes, registry_error = {}, str(exc)
    commands = commands_by_plugin or {}
    # Failures are read after the registry is built: a plugin whose mode registration raised is recorded then.
    failures = plugin_failures()
    return {
        "modeopt_core_version": __version__,
        "autoload": _autoload_setting(),
        "plugins": [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "modes": modes.get(p.name, []),
                "hooks": list(p.hooks),
                "commands": commands.get(p.name, []),
            }
            for p in sorted(list_plugins(), key=lambda p: (p.name != "modeopt-core", p.name))
        ],
        "failures": [
            {"name": f.name, "distribution": f.distribution, "version": f.version, "error": f.error}
            for f in failures
        ],
        "registry_error": registry_error,
    }


def _origin(entry: dict[str, Any]) -> str:
    if entry["distribution"] == "<unregistered>":
        return "registered explicitly"
    return f"{entry['distribution']} {entry['version']}".strip()


def _print_text(report: dict[str, Any]) -> None:
    out = sys.stdout
    plugins, failures = report["plugins"], report["failures"]
    autoload = report["autoload"]
    note = "autoload on" if autoload["enabled"] else f"autoload off ({_ENV_DISABLE})"
    if autoload["enabled"] and autoload["only"]:
        note = f"autoload limited to {', '.join(autoload['only'])} ({_ENV_ONLY})"
    count = f"{len(plugins)} plugin" + ("" if len(plugins) == 1 else "s")
    out.write(f"modeopt-core {report['modeopt_core_version']}: {count}, {note}\n")
    width = max((len(p["name"]) for p in [*plugins, *failures]), default=0) + 2
    for entry in plugins:
        out.write(f"\n{entry['name']:<{width}}{_origin(entry)}\n")
        for label in ("modes", "commands", "hooks"):
            if entry[label]:
                out.write(wrap_pairs(entry[label], "    ", f"{label + ':':<10}") + "\n")
    if failures:
        out.write(f"\nfailed to load ({len(failures)}):\n")
        for failure in failures:
            out.write(f"\n{failure['name']:<{width}}{_origin(failure)}\n    error:    {failure['error']}\n")
    if report["registry_error"]:
        out.write(f"\nmode registry error: {report['registry_error']}\n")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``modeopt plugins``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    """List plugins; exit status 1 if any plugin failed to load or the plugins' modes clash."""
    report = plugins_report(getattr(args, "_commands_by_plugin", None))
    if args.json:
        print_json(report, sys.stdout)
    else:
        _print_text(report)
    return 1 if report["failures"] or report["registry_error"] else 0
