from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_core.checkpoint import save
from tests.cli.cli_support import ModesPlugin
from tests.core.toymodes import ToyPlugin


@pytest.fixture
def cli_modes() -> Iterator[None]:
    names = [mo.register_plugin(ModesPlugin(), name="cli-modes"), mo.register_plugin(ToyPlugin(), name="cli-toy")]
    yield
    for name in names:
        mo.unregister_plugin(name)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.fixture
def checkpoint(cli_modes: None, tmp_path: Path) -> Path:
    """A real checkpoint: cli_pick (records a subnet) then toy_tag."""
    model = mo.apply_mode(_model(), [("cli_pick", {"divisor": 4}), ("toy_tag", {"tag": "pruned"})])
    path = tmp_path / "model.safetensors"
    save(model, path)
    return path


