"""One rank of a distillation run: ``python -m tests.distill._ddp_worker WORKDIR SCENARIO [SCENARIO ...]``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    workdir, names = Path(argv[0]), argv[1:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"file://{os.environ['MODEOPT_TEST_STORE']}", rank=rank,
                            world_size=world)
    from ._ddp_scenarios import SCENARIOS

    try:
        for name in names:
            result = SCENARIOS[name](workdir, [rank])
            (workdir / f"{name}.rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
