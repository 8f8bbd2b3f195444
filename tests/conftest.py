"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests build tiny random-config models in code; a hub lookup would be a bug (and there is no network).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PLUGIN_DISTS = Path(__file__).parent / "core" / "plugin_dists"


@pytest.fixture(scope="session")
def installed_dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example and broken plugin distributions installed for real (wheels, entry points) into a folder."""
    target = tmp_path_factory.mktemp("plugin-site")
    for dist in ("example", "broken"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(target), str(PLUGIN_DISTS / dist)],
            check=True, capture_output=True,
        )
    return target


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Latency tables measured by the tests (and their subprocesses) go to a temporary folder, never
    to the user's cache (``MODEOPT_CACHE_DIR``)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MODEOPT_CACHE_DIR", str(tmp_path_factory.mktemp("modeopt-cache")))
    yield
    patch.undo()
