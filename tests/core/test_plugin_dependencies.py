"""Plugin dependencies (``modeopt_plugin_requires``), ``MODEOPT_PLUGINS`` typos, and the messages a plugin
author sees when registration or a mode lookup fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import modeopt_core as mo


def _child(code: str, site: Path | None = None, **env: str) -> dict[str, Any]:
    paths = [str(site)] if site else []
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.getcwd()]), **env}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plugin(name: str, requires: list[str]) -> types.ModuleType:
    module = types.ModuleType(name)

    @mo.hookimpl
    def modeopt_plugin_requires() -> list[str]:
        return requires

    module.modeopt_plugin_requires = modeopt_plugin_requires  # type: ignore[attr-defined]
    return module


def test_a_missing_requirement_refuses_the_plugin_naming_it() -> None:
    plugin = _plugin("needs_nosuch", ["nosuch-dependency"])
    with pytest.raises(mo.PluginError, match="requires plugin 'nosuch-dependency'.*no installed distribution"):
        mo.register_plugin(plugin, name="needs-nosuch")
    assert "needs-nosuch" not in {p.name for p in mo.list_plugins()}


def test_a_registered_requirement_is_accepted() -> None:
    name = mo.register_plugin(_plugin("needs_autonas", ["autonas"]), name="needs-autonas")
    try:
        assert name in {p.name for p in mo.list_plugins()}
    finally:
        mo.unregister_plugin(name)


def test_registering_an_installed_plugin_again_names_its_registration() -> None:
    import modeopt_fastnas.plugin

    with pytest.raises(mo.PluginError) as info:
        mo.register_plugin(modeopt_fastnas.plugin, name="fastnas_test")
    text = str(info.value)
    assert "already registered under the name 'fastnas'" in text and "modeopt-fastnas" in text
    assert "MODEOPT_DISABLE_PLUGIN_AUTOLOAD=1" in text


def test_only_fastnas_loads_what_it_requires() -> None:
    result = _child("""
        import json, torch
        import modeopt_core as mo
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
        m = mo.apply_mode(m, ["fastnas"])
        m = mo.export(m)
        print(json.dumps({"plugins": sorted(p.name for p in mo.list_plugins()), "modes": mo.applied_modes(m)}))
    """, MODEOPT_PLUGINS="fastnas")
    assert {"autonas", "fastnas"} <= set(result["plugins"])
    assert result["modes"] == ["fastnas", "export_nas"]


def test_an_unknown_plugin_name_is_reported_not_ignored() -> None:
    result = _child("""
        import json
        import modeopt_core as mo
        failures = [[f.name, f.error] for f in mo.plugin_failures()]
        try:
            mo.apply_mode(__import__("torch").nn.Linear(2, 2), ["fastnas"])
            error = ""
        except mo.ModeNotFoundError as exc:
            error = str(exc)
        print(json.dumps({"failures": failures, "error": error, "modes": mo.list_modes()}))
    """, MODEOPT_PLUGINS="nosuch")
    ((name, why),) = result["failures"]
    assert name == "nosuch" and "no installed plugin has that entry-point or distribution name" in why
    assert "autonas" in why and "fastnas" in why  # what is installed
    assert result["modes"] == []
    assert "unknown mode 'fastnas'" in result["error"] and "'nosuch'" in result["error"]


def test_with_autoload_off_a_requirement_must_be_registered_first() -> None:
    result = _child("""
        import json
        import modeopt_core as mo
        import modeopt_autonas.plugin, modeopt_fastnas.plugin
        try:
            mo.register_plugin(modeopt_fastnas.plugin, name="fastnas")
            first = ""
        except mo.PluginError as exc:
            first = str(exc)
        mo.register_plugin(modeopt_autonas.plugin, name="autonas")
        mo.register_plugin(modeopt_fastnas.plugin, name="fastnas")
        print(json.dumps({"first": first, "modes": mo.list_modes()}))
    """, MODEOPT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "requires plugin 'autonas'" in result["first"] and "register it first" in result["first"]
    assert {"autonas", "export_nas", "fastnas"} <= set(result["modes"])


def test_a_missing_mode_names_plugins_that_failed_to_load(installed_dists: Path) -> None:
    result = _child("""
        import json
        import modeopt_core as mo
        try:
            mo.get_mode("nosuch_mode")
        except mo.ModeNotFoundError as exc:
            print(json.dumps({"error": str(exc)}))
    """, site=installed_dists)
    assert "failed to load" in result["error"]
    assert "'broken' (modeopt-broken-plugin 0.0.1)" in result["error"] and "ImportError" in result["error"]
