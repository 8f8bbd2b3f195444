from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modeopt_core as mo
from modeopt_core import __version__
from modeopt_core.cli import main, plugin_commands
from tests.cli.cli_support import CommandsPlugin, ExplodingCommandsPlugin, RivalPlugin
from tests.core.toymodes import ScaleMode

SCRIPT = Path(sys.executable).with_name("modeopt")


@pytest.fixture
def command_plugins() -> Iterator[None]:
    names = [mo.register_plugin(CommandsPlugin(), name="cmds"), mo.register_plugin(RivalPlugin(), name="rival")]
    yield
    for name in names:
        mo.unregister_plugin(name)


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"modeopt-core {__version__} (Python ")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "plugins" in out and "inspect" in out and "MODEOPT_DISABLE_PLUGIN_AUTOLOAD" in out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert main(["inspect"]) == 2
    assert "CKPT" in capsys.readouterr().err


def test_plugins_lists_modes_hooks_and_commands(cli_modes: None, command_plugins: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["plugins", "--json"])
    report = json.loads(capsys.readouterr().out)
    # Installed entry-point plugins that fail to load (none, once they are complete) set the status.
    assert status == (1 if report["failures"] else 0)
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["cli-modes"]["modes"] == ["cli_pick"]
    assert by_name["cli-toy"]["modes"] == ["toy_scale", "toy_tag", "toy_unscale"]
    assert by_name["cli-toy"]["distribution"] == "<unregistered>"
    assert by_name["cli-modes"]["hooks"] == ["modeopt_register_modes"]
    assert by_name["cmds"]["commands"] == ["hello"] and by_name["rival"]["commands"] == ["rival-only"]
    assert by_name["modeopt-core"]["version"] == __version__
    assert by_name["modeopt-core"]["commands"] == ["plugins", "inspect"]
    assert report["registry_error"] is None
    assert not {"cli-modes", "cli-toy", "cmds", "rival"} & {f["name"] for f in report["failures"]}

    assert main(["plugins"]) == status
    out = capsys.readouterr().out
    assert "cli-toy" in out and "registered explicitly" in out
    assert "modes:    toy_scale  toy_tag  toy_unscale" in out
    assert "commands: hello" in out


class _BrokenModes:
    @mo.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        raise RuntimeError("mode registration exploded")


def test_plugins_reports_failures_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    mo.register_plugin(_BrokenModes(), name="broken-modes")
    try:
        assert main(["plugins"]) == 1
    finally:
        mo.unregister_plugin("broken-modes")
    out = capsys.readouterr().out
    assert "failed to load" in out and "RuntimeError: mode registration exploded" in out


class _Dup:
    @mo.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(ScaleMode())


def test_plugins_reports_clashing_modes(cli_modes: None, capsys: pytest.CaptureFixture[str]) -> None:
    mo.register_plugin(_Dup(), name="dup")
    try:
        assert main(["plugins", "--json"]) == 1
    finally:
        mo.unregister_plugin("dup")
    report = json.loads(capsys.readouterr().out)
    assert "'toy_scale' is registered twice" in report["registry_error"]


def test_plugin_command_runs_with_its_arguments(command_plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello", "--name", "seven"]) == 7
    assert "hello seven" in capsys.readouterr().out
    assert main(["rival-only"]) == 3
    assert main(["--help"]) == 0
    assert "say hello to 100% of the world [plugin cmds]" in capsys.readouterr().out


def test_plugin_command_refusals_are_explained(command_plugins: None) -> None:
    commands, problems = plugin_commands({"plugins", "inspect"})
    ours = {(c.name, c.plugin) for c in commands if c.plugin in ("cmds", "rival")}  # installed plugins add more
    assert ours == {("hello", "cmds"), ("rival-only", "rival")}
    text = "\n".join(problems)
    assert "plugin 'cmds': command 'inspect' refused: 'inspect' is a built-in modeopt command" in text
    assert "command 'Bad_Name' refused: a command name must be lowercase" in text
    assert "command 'not-runnable' refused: run must be a callable" in text
    assert "command 'clashing-flag' refused: configure(parser) failed: ArgumentError" in text
    assert "command 'bad-help' refused: configure(parser) failed: TypeError" in text
    assert "plugin 'rival': command 'hello' refused: plugin 'cmds' already provides 'hello'" in text


def test_builtin_survives_a_clash_and_warnings_reach_stderr(
    command_plugins: None, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "cli_pick -> toy_tag" in captured.out and "hello" not in captured.out
    assert "'inspect' is a built-in modeopt command" in captured.err


def test_a_plugin_whose_command_hook_raises_does_not_stop_others(command_plugins: None) -> None:
    mo.register_plugin(ExplodingCommandsPlugin(), name="exploding-cmds")
    try:
        commands, problems = plugin_commands({"plugins", "inspect"})
    finally:
        mo.unregister_plugin("exploding-cmds")
    assert "hello" in {c.name for c in commands}
    assert any("'exploding-cmds' failed to register its commands: RuntimeError" in p for p in problems)


def test_command_errors_are_one_line_without_traceback(command_plugins: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello", "--fail", "modeopt"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "modeopt hello: error: the hello command was asked to fail"
    assert main(["hello", "--fail", "bug"]) == 1
    err = capsys.readouterr().err
    assert "modeopt hello: internal error (plugin 'cmds'): ValueError: a plugin bug; rerun with -v" in err
    assert "Traceback" not in err
    assert main(["-v", "hello", "--fail", "bug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_info_logs_and_progress_on_stderr_unless_quiet(command_plugins: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello", "--name", "ann"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "hello ann"
    # stderr is not a terminal here: plain timestamped lines, no carriage returns
    assert "INFO modeopt_clitest: greeting ann" in captured.err
    assert "INFO modeopt_core.progress: hello steps: 3/3 it (100%)" in captured.err
    assert "\r" not in captured.err
    for argv in (["-q", "hello"], ["hello", "--quiet"]):
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert captured.out.strip() == "hello world" and "greeting" not in captured.err
        assert "hello steps" not in captured.err and "refused" in captured.err  # warnings still shown


def test_logging_is_left_as_it_was(command_plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    assert main(["-v", "hello"]) == 0
    assert main(["hello", "--fail", "bug"]) == 1
    assert (root.level, list(root.handlers)) == before


def _run(*argv: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    if site is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(site), os.getcwd()])
    return subprocess.run(list(argv), capture_output=True, text=True, env=full_env, timeout=120)


def test_console_script_entry_point() -> None:
    """`modeopt` is installed as a console script (`python -m modeopt_core` runs in tests/cli/test_inspect.py)."""
    assert SCRIPT.exists(), f"console script missing at {SCRIPT}: run `pip install -e .`"
    proc = _run(str(SCRIPT), "--version")
    assert proc.returncode == 0 and proc.stdout.startswith(f"modeopt-core {__version__} (Python ")
    assert proc.stderr == ""  # --version answers without loading plugins


def test_installed_plugin_distributions_are_listed(installed_dists: Path) -> None:
    proc = _run(str(SCRIPT), "plugins", "--json", site=installed_dists, MODEOPT_PLUGINS="example,broken")
    assert proc.returncode == 1  # the broken distribution fails to load
    report = json.loads(proc.stdout)
    example = next(p for p in report["plugins"] if p["name"] == "example")
    assert (example["distribution"], example["version"]) == ("modeopt-example-plugin", "1.2.3")
    assert example["modes"] == ["export_sparsity", "halve_linear", "sparse_magnitude"]
    assert example["hooks"] == ["modeopt_register_modes"]
    (failure,) = report["failures"]
    assert failure["distribution"] == "modeopt-broken-plugin" and "ImportError" in failure["error"]
    assert report["autoload"] == {"enabled": True, "only": ["example", "broken"]}

    text = _run(str(SCRIPT), "plugins", site=installed_dists, MODEOPT_PLUGINS="example")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "example       modeopt-example-plugin 1.2.3" in text.stdout
    assert "autoload limited to example (MODEOPT_PLUGINS)" in text.stdout

    off = _run(str(SCRIPT), "plugins", site=installed_dists, MODEOPT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode == 0 and "autoload off" in off.stdout and "example" not in off.stdout
