from __future__ import annotations

import pytest
from torch import nn

from tests.distill import _models


@pytest.fixture
def student() -> nn.Module:
    return _models.student()


@pytest.fixture
def teacher() -> nn.Module:
    return _models.teacher()
