"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import subprocess
import sys
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
