"""The lazy package faces: names load on first access, the tables agree with the typed imports."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FACES = ("modeopt_core", "modeopt_core.sdk", "modeopt_autonas", "modeopt_autonas.space", "modeopt_fastnas")


def _typed_imports(face: str) -> tuple[dict[str, str], set[str]]:
    """(name -> module, submodules) of the face's ``if _typing.TYPE_CHECKING:`` imports."""
    tree = ast.parse(inspect.getsource(importlib.import_module(face)))
    blocks = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "_typing.TYPE_CHECKING"]
    assert len(blocks) == 1, f"{face}: one `if _typing.TYPE_CHECKING:` block of imports"
    names: dict[str, str] = {}
    submodules: set[str] = set()
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            if node.module is None:
                submodules.add(alias.name)
            else:
                names[alias.name] = node.module
    return names, submodules


@pytest.mark.parametrize("face", FACES)
def test_the_table_says_what_the_typed_imports_say(face: str) -> None:
    module = importlib.import_module(face)
    names, submodules = _typed_imports(face)
    table = {name: mod for mod, group in module._EXPORTS.items() for name in group}
    assert table == names
    assert set(module._SUBMODULES) == submodules
    eager = {n for n, v in vars(module).items() if not n.startswith("_") and n in module.__all__}
    assert set(module.__all__) == set(table) | submodules | eager


@pytest.mark.parametrize("face", FACES)
def test_every_lazy_name_is_the_object_its_module_defines(face: str) -> None:
    module = importlib.import_module(face)
    package = module.__package__
    for mod, group in module._EXPORTS.items():
        source = importlib.import_module(f".{mod}", package)
        for name in group:
            assert getattr(module, name) is getattr(source, name), f"{face}.{name}"
    for name in module._SUBMODULES:
        assert getattr(module, name) is importlib.import_module(f".{name}", package)
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("face", FACES)
def test_an_unknown_name_is_an_attribute_error_naming_the_module(face: str) -> None:
    module = importlib.import_module(face)
    with pytest.raises(AttributeError, match=f"module '{face}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
    assert not hasattr(module, "no_such_name")


def _modeopt_modules_after(code: str) -> list[str]:
    """The ``modeopt*`` modules a fresh interpreter has loaded after running ``code``."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('modeopt'))))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_importing_the_faces_loads_none_of_their_modules() -> None:
    loaded = _modeopt_modules_after("import modeopt_core, modeopt_fastnas, modeopt_autonas")
    assert loaded == ["modeopt_autonas", "modeopt_core", "modeopt_core._lazy", "modeopt_core.sdk", "modeopt_fastnas"]


def test_first_use_loads_only_what_the_name_needs() -> None:
    loaded = _modeopt_modules_after("import modeopt_core as mo\nmo.ConfigError")
    assert "modeopt_core.errors" in loaded
    assert "modeopt_core.conversion" not in loaded and "modeopt_autonas" not in loaded


def _package(root: Path) -> None:
    pkg = root / "lazyface_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from modeopt_core.sdk import lazy_exports
        __getattr__, __dir__ = lazy_exports(__name__, {"thing": "impl", "progress": "progress"}, ("sub",))
    """))
    (pkg / "impl.py").write_text("LOADS = []\nLOADS.append(1)\nthing = object()\n")
    (pkg / "progress.py").write_text("def progress():\n    return 'the function, not the module'\n")
    (pkg / "sub.py").write_text("VALUE = 3\n")


def test_lazy_exports_loads_on_first_access_and_stores_the_value(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        pkg = importlib.import_module("lazyface_pkg")
        assert "lazyface_pkg.impl" not in sys.modules
        thing = pkg.thing
        assert sys.modules["lazyface_pkg.impl"].thing is thing
        assert vars(pkg)["thing"] is thing  # stored: later lookups skip __getattr__
        assert pkg.thing is thing and sys.modules["lazyface_pkg.impl"].LOADS == [1]
        # a name equal to its module's name is the name, only listed submodules are modules
        assert pkg.progress() == "the function, not the module"
        assert pkg.sub.VALUE == 3
        assert {"thing", "progress", "sub"} <= set(dir(pkg))
    finally:
        for name in [m for m in sys.modules if m.startswith("lazyface_pkg")]:
            del sys.modules[name]

