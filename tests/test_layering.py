"""The intended layering (docs/concepts.md): plugins reach the core through its public face only, the search
space never imports the AutoNAS algorithm, and FastNAS runs without loading that algorithm."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import modeopt_autonas.space
import modeopt_core

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
ALGORITHM = {"modeopt_autonas.modes", "modeopt_autonas.searchers", "modeopt_autonas.training"}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(absolute module, imported names, line)`` of every import in a file (relative ones resolved)."""
    package = ".".join(path.relative_to(next(p for p in path.parents if p.parent == PLUGINS)).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: -node.level] if not path.name == "__init__.py" else package.split(".")
                if path.name == "__init__.py" and node.level > 1:
                    base = package.split(".")[: -(node.level - 1)]
                module = ".".join([*base, module] if module else base)
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _plugin_sources() -> list[Path]:
    return sorted(p for p in PLUGINS.glob("*/modeopt_*/**/*.py"))


def test_plugins_use_only_the_public_core() -> None:
    public = set(modeopt_core.__all__)
    offences = []
    for path in _plugin_sources():
        for module, names, line in _imports(path):
            if module == "modeopt_core":
                offences += [f"{path.relative_to(ROOT)}:{line} imports private {n}" for n in names if n not in public]
            elif module.startswith("modeopt_core.") and module not in ("modeopt_core.sdk", "modeopt_core.distributed"):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports from {module}")
    assert not offences, "\n".join(offences)


def test_other_plugins_use_only_the_public_search_space() -> None:
    public = set(modeopt_autonas.space.__all__) | set(modeopt_autonas.__all__)
    offences = []
    for path in _plugin_sources():
        if path.is_relative_to(PLUGINS / "autonas"):
            continue
        for module, names, line in _imports(path):
            if module in ("modeopt_autonas", "modeopt_autonas.space"):
                offences += [f"{path.relative_to(ROOT)}:{line} imports {n}" for n in names if n not in public]
            elif module.startswith("modeopt_autonas."):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports from {module}")
    assert not offences, "\n".join(offences)


def test_the_search_space_never_imports_the_autonas_algorithm() -> None:
    offences = []
    for path in sorted((PLUGINS / "autonas" / "modeopt_autonas" / "space").rglob("*.py")):
        for module, _, line in _imports(path):
            if any(module == m or module.startswith(m + ".") for m in ALGORITHM):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("code", [
    "import modeopt_fastnas",
    "import modeopt_autonas.space as s, torch; s.select",
    # a whole FastNAS run: convert, prune to a budget, export
    "import torch, modeopt_core as mo, modeopt_fastnas as f\n"
    "m = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))\n"
    "x = torch.randn(1, 3, 8, 8)\n"
    "m, r = f.prune(m, {'flops': '60%'}, x, {'score_func': f.OutputAgreement(m, [x]), 'verbose': False})\n"
    "mo.export(m)",
])
def test_fastnas_does_not_load_the_autonas_algorithm(code: str) -> None:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('modeopt'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    # Building the mode registry instantiates the ``autonas`` descriptor (``modes``, a few small classes);
    # its supernet training and searchers stay unloaded.
    unexpected = ALGORITHM - {"modeopt_autonas.modes"} if "prune" in code else ALGORITHM
    assert not loaded & unexpected, sorted(loaded & unexpected)
