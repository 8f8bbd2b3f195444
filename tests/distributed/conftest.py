"""Fixtures of the distributed tests: one thread in-process, the same arithmetic as every rank."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The ranks run with one thread each; the single-process references must too (bitwise equal sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
