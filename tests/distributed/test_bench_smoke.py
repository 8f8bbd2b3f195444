"""``bench/distributed_sensitivity.py --quick`` runs 1 and 2 real ranks and finds identical maps (times unchecked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_bench_runs_and_finds_identical_maps(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "bench/distributed_sensitivity.py", "--quick", "--cache", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical sensitivity map, subnet and threshold on 1 and 2 ranks: yes" in out.stdout
    assert "| ranks | sensitivity map s (median) |" in out.stdout
    assert "reproduce: .venv/bin/python bench/distributed_sensitivity.py --quick" in out.stdout
