"""The real distribution: built and installed into a folder, found through its entry point in a fresh process,
listed by ``modeopt plugins``, and its modes used by name without importing the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import modeopt_core as mo

ROOT = Path(__file__).parents[2]
DIST = ROOT / "plugins" / "distill"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("distill-site")
    # built from a copy: the build writes build/ and *.egg-info next to the sources, never into the checkout
    source = tmp_path_factory.mktemp("distill-src") / "distill"
    shutil.copytree(DIST, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    return target


def _child(site: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "MODEOPT_PROGRESS": "off", **env}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=180)


_PROBE = """
    import contextlib, importlib.metadata as md, io, json, sys, torch
    import modeopt_core as mo
    from modeopt_core.cli import main
    from tests.distill import _models

    listings = []
    for argv in (["plugins", "--json"], ["plugins"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(argv)
        listings.append((status, out.getvalue()))

    x, y = _models.batch(4)
    model = mo.apply_mode(_models.student(), [("kd_loss", {"teacher": "tests.distill._models:teacher"})])
    loss = model.compute_kd_loss(student_loss=torch.nn.functional.cross_entropy(model(x), y))
    model = mo.export(model)
    dist = md.distribution("modeopt-distill")
    print(json.dumps({
        "modes": mo.list_modes(),
        "provider": list(mo.mode_provider("kd_loss")),
        "imported_from": sys.modules["modeopt_distill"].__file__,
        "dist_files_at": str(dist.locate_file("")),
        "entry_points": [ep.value for ep in dist.entry_points if ep.group == "modeopt.plugins"],
        "loss": float(loss.detach()),
        "applied": mo.applied_modes(model),
        "listings": listings,
    }))
"""


@pytest.fixture(scope="module")
def probe(site: Path) -> dict[str, Any]:
    """One fresh process (starting Python with torch costs seconds) that uses the installed plugin."""
    proc = _child(site, "-c", textwrap.dedent(_PROBE))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_entry_point_is_discovered_and_the_modes_work_by_name(site: Path, probe: dict[str, Any]) -> None:
    result = probe
    assert {"kd_loss", "export_student"} <= set(result["modes"])
    assert result["provider"] == ["modeopt-distill", "0.1.0"]
    assert result["imported_from"].startswith(str(site))  # the installed copy, not the source tree
    assert result["dist_files_at"].startswith(str(site))
    assert result["entry_points"] == ["modeopt_distill.plugin"]
    assert result["loss"] > 0 and result["applied"] == ["kd_loss", "export_student"]


def test_modeopt_plugins_lists_the_distribution(probe: dict[str, Any]) -> None:
    (status, listing), (text_status, text) = probe["listings"]
    assert status == text_status == 0, listing
    report = json.loads(listing)
    (distill,) = [p for p in report["plugins"] if p["name"] == "distill"]
    assert (distill["distribution"], distill["version"]) == ("modeopt-distill", "0.1.0")
    assert distill["modes"] == ["export_student", "kd_loss"]
    assert "modeopt_register_modes" in distill["hooks"] and "modeopt_autonas_next_modes" in distill["hooks"]
    assert "distill" in text and "modeopt-distill 0.1.0" in text


def test_without_the_plugin_a_checkpoint_names_the_distribution(site: Path, tmp_path: Path) -> None:
    from tests.distill import _models

    path = tmp_path / "kd.safetensors"
    mo.save(mo.apply_mode(_models.student(), [("kd_loss", {})], mode_kwargs={"teacher": _models.teacher()}), path)
    code = f"""
        import modeopt_core as mo
        from tests.distill import _models
        try:
            mo.restore(_models.student(), {str(path)!r})
        except mo.CheckpointError as e:
            print(e)
    """
    proc = _child(site, "-c", textwrap.dedent(code), MODEOPT_PLUGINS="autonas,fastnas")
    assert "mode 'kd_loss' was provided by modeopt-distill 0.1.0 when saved: install it" in proc.stdout, proc.stderr
