from __future__ import annotations

from collections.abc import Iterator

import pytest

import modeopt_core as mo
from tests.core.checkpoint.ckpt_helpers import CheckpointModes


@pytest.fixture
def ckpt_modes() -> Iterator[str]:
    """The checkpoint tests' own modes, registered as if from distribution ``modeopt-ckpt-testmodes``."""
    name = mo.register_plugin(CheckpointModes(), name="ckpt-modes", distribution="modeopt-ckpt-testmodes")
    yield name
    mo.unregister_plugin(name)
