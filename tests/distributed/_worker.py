"""One rank of a distributed test run: ``python -m tests.distributed._worker WORKDIR SCENARIO [SCENARIO ...]``.

Environment: ``RANK``, ``WORLD_SIZE`` and ``MODEOPT_TEST_STORE`` (a file for ``init_method="file://..."``);
optional ``MODEOPT_TEST_KILL_AT``. Joins a gloo group (when WORLD_SIZE > 1), runs the scenarios in
order and writes ``WORKDIR/<scenario>.rank<R>.json`` after each.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # the same arithmetic as the single-process reference (one thread)
    workdir, names = Path(argv[0]), argv[1:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{os.environ['MODEOPT_TEST_STORE']}", rank=rank, world_size=world
        )
    from ._scenarios import SCENARIOS, Context

    kill_at = os.environ.get("MODEOPT_TEST_KILL_AT")
    ctx = Context(workdir, kill_at=int(kill_at) if kill_at else None)
    try:
        for name in names:
            result = SCENARIOS[name](ctx)
            (workdir / f"{name}.rank{rank}.json").write_text(json.dumps(result, sort_keys=True))
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
