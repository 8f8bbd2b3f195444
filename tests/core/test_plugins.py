from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import modeopt_core as mo
from tests.core.toymodes import ScaleMode, TagMode


def _run(site: Path, code: str, **env: str) -> dict[str, Any]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]), **env}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=True, capture_output=True, text=True, env=full_env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


_PROBE = """
    import json, torch
    from torch import nn
    import modeopt_core as mo
    failures = {f.name: [f.distribution, f.version, f.error] for f in mo.plugin_failures()}
    result = {"modes": mo.list_modes(), "failures": failures}
    if "halve_linear" in result["modes"]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3))
        x = torch.randn(1, 3)
        ref = model(x)
        model = mo.apply_mode(model, ("halve_linear", {"factor": 0.25}))
        result["ratio"] = float((model(x) / ref).mean())
        result["provider"] = list(mo.mode_provider("halve_linear"))
        result["still_linear"] = isinstance(model[0], nn.Linear)
    print(json.dumps(result))
"""


def test_third_party_plugin_found_by_name_without_import(installed_dists: Path) -> None:
    result = _run(installed_dists, _PROBE)
    assert "halve_linear" in result["modes"]
    assert result["ratio"] == pytest.approx(0.25)
    assert result["provider"] == ["modeopt-example-plugin", "1.2.3"]
    assert result["still_linear"] is True


def test_broken_plugin_is_reported_and_does_not_block_others(installed_dists: Path) -> None:
    result = _run(installed_dists, _PROBE)
    dist, version, error = result["failures"]["broken"]
    assert (dist, version) == ("modeopt-broken-plugin", "0.0.1")
    assert "ImportError" in error and "simulated" in error
    assert "halve_linear" in result["modes"]


def test_autoload_can_be_disabled(installed_dists: Path) -> None:
    result = _run(installed_dists, _PROBE, MODEOPT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "halve_linear" not in result["modes"] and result["failures"] == {}


def test_autoload_limited_to_named_plugins(installed_dists: Path) -> None:
    result = _run(installed_dists, _PROBE, MODEOPT_PLUGINS="example")
    assert "halve_linear" in result["modes"] and result["failures"] == {}


class _Dup:
    @mo.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(ScaleMode())


def test_duplicate_mode_names_raise_naming_both(toy_modes: str) -> None:
    mo.register_plugin(_Dup(), name="dup-plugin")
    try:
        who = "'(toy-modes|dup-plugin)'"
        pattern = f"'toy_scale' is registered twice: by plugin {who}.*and by plugin {who}"
        with pytest.raises(mo.ModeRegistrationError, match=pattern):
            mo.get_mode("toy_scale")
    finally:
        mo.unregister_plugin("dup-plugin")
    assert mo.get_mode("toy_scale").name == "toy_scale"


class _Exploding:
    @mo.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(TagMode())
        raise RuntimeError("registration exploded")


def test_plugin_failing_to_register_is_isolated(toy_modes: str) -> None:
    mo.unregister_plugin(toy_modes)
    try:
        mo.register_plugin(_Exploding(), name="exploding")
        try:
            assert "toy_tag" not in mo.list_modes()
            assert any(f.name == "exploding" and "exploded" in f.error for f in mo.plugin_failures())
        finally:
            mo.unregister_plugin("exploding")
    finally:
        from tests.core.toymodes import ToyPlugin
        mo.register_plugin(ToyPlugin(), name=toy_modes)


class _Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @mo.hookimpl(wrapper=True)
    def modeopt_convert(self, mode: Any, model: Any, config: Any, mode_kwargs: Any) -> Iterator[Any]:
        self.seen.append(("convert-before", mode.name))
        result = yield
        self.seen.append(("convert-after", type(result[0]).__name__))
        return result

    @mo.hookimpl(wrapper=True)
    def modeopt_restore(self, mode: Any, model: Any, config: Any, metadata: Any) -> Iterator[Any]:
        self.seen.append(("restore", mode.name))
        return (yield)

    @mo.hookimpl(wrapper=True)
    def modeopt_update_for_save(self, mode: Any, model: Any, config: Any, metadata: Any) -> Iterator[Any]:
        result = yield
        metadata["observed"] = True
        return result


class _Veto:
    @mo.hookimpl(wrapper=True)
    def modeopt_convert(self, mode: Any, model: Any, config: Any, mode_kwargs: Any) -> Iterator[Any]:
        result = yield
        if mode.name == "toy_tag":
            raise mo.ConvertError("vetoed by policy plugin")
        return result


def test_wrappers_observe_convert_restore_and_save(toy_modes: str) -> None:
    obs = _Observer()
    mo.register_plugin(obs, name="observer")
    try:
        model = mo.apply_mode(nn.Linear(2, 2), "toy_scale")
        state = mo.modeopt_state(model)
        mo.restore_from_modeopt_state(nn.Linear(2, 2), state)
    finally:
        mo.unregister_plugin("observer")
    assert obs.seen == [("convert-before", "toy_scale"), ("convert-after", "_Scaled"), ("restore", "toy_scale")]
    assert state["modes"][0]["metadata"]["observed"] is True


def test_wrapper_can_veto_and_model_is_rolled_back(toy_modes: str) -> None:
    mo.register_plugin(_Veto(), name="veto")
    try:
        model = nn.Linear(2, 2)
        with pytest.raises(mo.ConvertError, match="vetoed"):
            mo.apply_mode(model, "toy_tag")
        assert not hasattr(model, "modeopt_tag") and mo.applied_modes(model) == []
    finally:
        mo.unregister_plugin("veto")


def test_list_plugins_reports_hooks(toy_modes: str) -> None:
    info = {p.name: p for p in mo.list_plugins()}
    assert "modeopt_register_modes" in info["toy-modes"].hooks
    assert info["modeopt-core"].distribution == "modeopt-core"
    with pytest.raises(mo.PluginError, match="already registered"):
        mo.register_plugin(object(), name="toy-modes")
    with pytest.raises(mo.PluginError, match="no removable plugin"):
        mo.unregister_plugin("does-not-exist")


def test_plugin_can_add_hookspecs() -> None:
    import types

    import pluggy

    spec_mod = types.ModuleType("extra_specs")
    marker = pluggy.HookspecMarker("modeopt")

    @marker
    def modeopt_extra_hook(x: int) -> int:  # type: ignore[empty-body]
        """An extension point opened by a plugin."""

    spec_mod.modeopt_extra_hook = modeopt_extra_hook  # type: ignore[attr-defined]

    class Opener:
        @mo.hookimpl
        def modeopt_add_hookspecs(self, pluginmanager: pluggy.PluginManager) -> None:
            pluginmanager.add_hookspecs(spec_mod)

    class Implementer:
        @mo.hookimpl
        def modeopt_extra_hook(self, x: int) -> int:
            return x * 2

    mo.register_plugin(Opener(), name="opener")
    mo.register_plugin(Implementer(), name="implementer")
    try:
        assert mo.get_plugin_manager().hook.modeopt_extra_hook(x=21) == [42]
    finally:
        mo.unregister_plugin("implementer")
        mo.unregister_plugin("opener")
