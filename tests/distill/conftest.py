from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from tests.distill import _models


@pytest.fixture
def student() -> nn.Module:
    return _models.student()


@pytest.fixture
def teacher() -> nn.Module:
    return _models.teacher()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: one thread is as fast, and much faster on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
