from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import modeopt_core as mo
from tests.core.toymodes import ToyPlugin


@pytest.fixture
def toy_modes() -> Iterator[str]:
    name = mo.register_plugin(ToyPlugin(), name="toy-modes")
    yield name
    mo.unregister_plugin(name)


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
