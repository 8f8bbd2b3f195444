"""Child process of the race test: re-saves one checkpoint path forever, each save self-consistent.

Save ``k`` holds weights all equal to ``k`` and the mode metadata ``payload = [k] * (1 + k % 7)`` (so
the header length changes from save to save), so a restore that mixed two saves is visible.
Prints ``started`` once the first save is in place. Usage: ``python -m ... PATH``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import modeopt_core as mo
from tests.core.checkpoint.ckpt_helpers import CheckpointModes


def build() -> nn.Module:
    return nn.Sequential(*[nn.Linear(256, 256) for _ in range(6)])


def snapshot_of(k: int) -> nn.Module:
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(k))
    return mo.apply_mode(model, "ckpt_payload", mode_kwargs={"payload": [k] * (1 + k % 7)})


def main(path: str) -> None:
    torch.set_num_threads(1)
    mo.register_plugin(CheckpointModes(), name="ckpt-modes", distribution="modeopt-ckpt-testmodes")
    k = 0
    while True:
        mo.save(snapshot_of(k), path)
        if k == 0:
            print("started", flush=True)
        k += 1


if __name__ == "__main__":
    main(sys.argv[1])
