"""A FastNAS search killed with SIGKILL resumes from its checkpoint without redoing finished hparams."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modeopt_core.searcher import SEARCH_CHECKPOINT_KIND
from modeopt_core.statefile import read_state_file
from tests.fastnas._kill_worker import run

ROOT = Path(__file__).parents[2]


def _worker(ckpt: Path, out: Path, kill_at: int | None = None, downstream: bool = False
            ) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "tests.fastnas._kill_worker", str(ckpt), str(out)]
    if kill_at is not None:
        args.append(str(kill_at))
    if downstream:
        args.append("--downstream")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("downstream", [False, True], ids=["full", "downstream"])
def test_sigkilled_search_resumes_without_reevaluating_and_ends_identically(tmp_path: Path, downstream: bool) -> None:
    reference = run(None, downstream=downstream)  # uninterrupted, in this process
    probes = ["probe", "probe"]  # importance="auto": one probe subnet per candidate ranking
    assert reference["evaluated"][:11] == probes + ["original"] + ["conv1.out_channels"] * 7 + ["conv2.out_channels"]
    assert set(reference["importance_probe"]) == {"contribution", "activation"}
    assert (reference["downstream_groups"] > 0) == downstream
    assert reference["map_calibration_batches"] == 4  # the map's share of the 8 drawn batches
    if downstream:  # downstream-only entries are exact: the same map and subnet as full evaluations
        full = run(None)
        assert reference["subnet"] == full["subnet"] and reference["evaluated"] == full["evaluated"]
        for name, drops in full["sensitivity_map"].items():
            assert reference["sensitivity_map"][name] == pytest.approx(drops, abs=1e-9)

    ckpt, out = tmp_path / "search.ckpt", tmp_path / "out.json"
    killed = _worker(ckpt, out, kill_at=12, downstream=downstream)  # dies inside conv2's second evaluation
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and ckpt.exists(), killed.stderr
    state = read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND)["state"]
    assert list(state["sensitivity_raw"]) == ["conv1.out_channels"]  # checkpointed after each hparam
    assert state["num_score_evals"] == 10 and state["importance_chosen"] == reference["importance"]

    resumed = _worker(ckpt, out, downstream=downstream)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(out.read_text())
    assert result["resumed"], (result, reference)
    assert not {"probe", "original", "conv1.out_channels"} & set(result["evaluated"])
    assert result["evaluated"] == reference["evaluated"][10:], (result, reference)
    assert (result["importance"], result["importance_probe"]) == (reference["importance"], reference["importance_probe"])
    assert result["num_score_evals_total"] == len(reference["evaluated"])
    assert result["subnet"] == reference["subnet"] and result["map_calibration_batches"] == 4
    for name, drops in reference["sensitivity_map"].items():
        assert result["sensitivity_map"][name] == pytest.approx(drops, abs=1e-6)
