"""Restoring keeps peak memory near one copy of the weights (tensors stream from a memory map)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("ckpt_memory_child.py")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS figures")
def test_restore_peak_memory_is_about_one_tensor_not_one_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEOPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([sys.executable, str(CHILD), str(tmp_path / "big.safetensors")], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    weights = figures["weights_mib"]
    assert figures["correct"]
    assert 75 < weights < 85
    # The meter works: a loader holding every tensor at once shows up as a full second copy ...
    assert figures["full_copy_peak_mib"] > 0.8 * weights, figures
    # ... while restore() holds at most one 4 MiB tensor at a time on top of the model it fills (the
    # mapped file pages are page cache, not private memory).
    assert figures["restore_peak_mib"] < 0.25 * weights, figures
    # Counting the mapped file pages too, the process grows by at most about one copy of the file.
    assert figures["restore_total_rss_mib"] < 1.25 * weights, figures
