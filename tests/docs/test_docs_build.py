"""The docs site builds offline with warnings as errors, and the pages agree with the code."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modeopt_core import cli

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs/mkdocstrings-python not installed (they come from requirements-dev.txt: bash tools/run.sh setup)",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in ("index", "concepts", "writing-a-plugin", "cli", "api"):
        assert (site / f"{page}.html").is_file(), page
    api = (site / "api.html").read_text()
    for name in ("modeopt_core.apply_mode", "modeopt_core.ModeDescriptor", "modeopt_core.hookspecs.modeopt_convert",
                 "modeopt_core.progress.progress", "modeopt_core.cli.main"):
        assert f'id="{name}"' in api, name
    # the plugin guide includes the real example distribution's files
    guide = (site / "writing-a-plugin.html").read_text()
    assert "HalveLinearMode" in guide and "modeopt-example-plugin" in guide
    assert "cdnjs" not in (site / "index.html").read_text()  # the site works offline


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_python_examples_parse(page: str) -> None:
    for block in _python_blocks(page):
        ast.parse(block)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_cli_reference_covers_every_builtin_command_and_option() -> None:
    reference = (DOCS / "cli.md").read_text()
    parser = cli._build_parser(cli._builtin_commands())
    missing = {s for s in _option_strings(parser) if f"`{s}`" not in reference}
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert f"## `modeopt {name}`" in reference, name
        missing |= {f"{name} {s}" for s in _option_strings(sub) if s not in reference}
    assert not missing, f"docs/cli.md does not mention: {sorted(missing)}"
    for variable in re.findall(r"^\s+(\w+)=", cli._ENVIRONMENT_HELP, flags=re.MULTILINE):
        assert f"`{variable}=" in reference, variable


def test_public_names_used_in_examples_exist() -> None:
    """Every ``mo.NAME`` in a Python example is a public name of modeopt_core (its ``__all__``)."""
    import modeopt_core

    used = {
        (page.name, name)
        for page in DOCS.glob("*.md")
        for block in _python_blocks(page.name)
        for name in re.findall(r"\bmo\.(\w+)", block)
    }
    assert used, "no example uses modeopt_core as mo"
    unknown = sorted((page, name) for page, name in used if name not in modeopt_core.__all__)
    assert not unknown, f"examples use names modeopt_core does not export: {unknown}"
