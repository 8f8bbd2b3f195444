from __future__ import annotations

import pytest
from torch import nn

from tests.distill import _models

# the models are tiny: one thread is as fast, and much faster on a CPU shared with other jobs
from tests.distributed.conftest import _one_thread  # noqa: F401  (an autouse fixture)


@pytest.fixture
def student() -> nn.Module:
    return _models.student()


@pytest.fixture
def teacher() -> nn.Module:
    return _models.teacher()

