"""Child process body for the SIGKILL test: saves a ~12 MB model to one path in an endless loop.

Every parameter holds the iteration number, so a restored file shows which save it came from. It runs
in processes forked from a multiprocessing fork server that has already imported torch, so that many
kill rounds stay cheap. Shared counters tell the parent where the child is, including whether the
file-writing call is in progress, so that some kills can be aimed at the write itself.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from modeopt_core import _writer
from modeopt_core.checkpoint import save


def build() -> nn.Module:
    return nn.Sequential(*[nn.Linear(512, 512) for _ in range(12)])


def save_forever(path: str, first: int, started: Any, done: Any, writing: Any, write_ns: Any) -> None:
    """Save iteration after iteration, publishing progress (and the last write's duration) in shared ints."""
    torch.set_num_threads(1)  # keeps fill_() cheap on a busy machine: the loop is then nearly all save()
    write_body = _writer._write_body

    def observed_write(*args: Any, **kwargs: Any) -> None:  # only observes; the real writer runs
        writing.value = 1
        t0 = time.perf_counter_ns()
        write_body(*args, **kwargs)
        write_ns.value = time.perf_counter_ns() - t0
        writing.value = 0

    _writer._write_body = observed_write  # type: ignore[assignment]
    model = build()
    k = first
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(k))
        started.value = k
        save(model, path)
        done.value = k
        k += 1
