"""A restore racing a process that re-saves the same path sees exactly one complete file (two real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

import modeopt_core as mo
from modeopt_core.errors import CheckpointError
from tests.core.checkpoint.ckpt_race_child import build

ROOT = Path(__file__).resolve().parents[3]
RESTORES = 25
TIME_LIMIT_S = 40.0  # bounds the test on a loaded machine; the counts below still have to hold


def _outcome(path: Path) -> str:
    try:
        model = mo.restore(build(), path)
    except CheckpointError:
        return "refused"
    values = {float(v) for p in model.parameters() for v in p.detach().unique()}
    payload = model.payload_seen
    if len(values) != 1:
        return "mixed weights"
    (k,) = values
    if payload != [int(k)] * (1 + int(k) % 7):
        return "state of one save, weights of another"
    return f"consistent:{int(k)}"


def test_restores_racing_a_writer_never_mix_two_files(tmp_path: Path, ckpt_modes: str) -> None:
    path = tmp_path / "raced.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEOPT_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-m", "tests.core.checkpoint.ckpt_race_child", str(path)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, text=True)
    outcomes: Counter[str] = Counter()
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "started"
        deadline = time.monotonic() + TIME_LIMIT_S
        while sum(outcomes.values()) < RESTORES and time.monotonic() < deadline:
            outcomes[_outcome(path)] += 1
            assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()  # type: ignore[union-attr]
    consistent = {k: n for k, n in outcomes.items() if k.startswith("consistent:")}
    assert set(outcomes) <= {*consistent, "refused"}, outcomes  # never a mix, never an untyped error
    assert sum(consistent.values()) >= 5, outcomes
    assert len(consistent) >= 2, f"the writer did not replace the file during the restores: {outcomes}"
    assert torch.get_num_threads() >= 1
