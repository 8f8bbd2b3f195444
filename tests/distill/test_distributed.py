"""Distillation of DDP-wrapped students on a real 2-process gloo group: a teacher on every rank,
compute_kd_loss through the wrapper, gradients averaged exactly as one process on the whole batch."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.distributed._launch import Launch, results

from . import _ddp_scenarios as sc

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs gloo")

WORLD = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("distill-ddp")
    launch = Launch(workdir, list(sc.SCENARIOS), WORLD, worker="tests.distill._ddp_worker")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' arithmetic
    try:
        single = {name: json.loads(json.dumps(fn(workdir, list(range(WORLD))))) for name, fn in sc.SCENARIOS.items()}
    except BaseException:
        for proc in launch.procs:  # do not leave the ranks running
            proc.kill()
            proc.wait()
        raise
    finally:
        torch.set_num_threads(threads)
    launch.wait()
    return {"ranks": {name: results(workdir, name, WORLD) for name in sc.SCENARIOS}, "single": single}


def test_every_rank_builds_its_teacher_and_ends_with_the_same_student(runs: dict[str, Any]) -> None:
    r0, r1 = runs["ranks"]["distil_ddp"]
    assert r0["modes"] == r1["modes"] == ["kd_loss"]
    assert r0["teacher"] == r1["teacher"]  # built from the recorded factory on each rank
    assert r0["params"] == r1["params"]  # gradients were synchronised (adapter included)
    assert "modeopt_kd_adapter1_weight" in r0["names"]
    assert r0["losses"] != r1["losses"]  # each rank distilled its own batches


def test_ddp_equals_one_process_on_the_whole_batch(runs: dict[str, Any]) -> None:
    ranked, single = runs["ranks"]["distil_ddp"][0], runs["single"]["distil_ddp"]
    for name, a, b in zip(single["names"], ranked["params"], single["params"]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6), name
    per_rank = [r["losses"] for r in runs["ranks"]["distil_ddp"]]
    assert single["losses"] == pytest.approx([sum(s) / WORLD for s in zip(*per_rank)], rel=1e-5)


def test_supernet_sampling_under_ddp_distils_every_subnet_on_every_rank(runs: dict[str, Any]) -> None:
    r0, r1 = runs["ranks"]["distil_supernet_ddp"]
    assert r0["subnets"] == r1["subnets"] == runs["single"]["distil_supernet_ddp"]["subnets"]
    assert len({tuple(s.values()) for s in r0["subnets"]}) == 3  # sandwich: max, min, random
    assert abs(r0["kls"][0]) < 1e-6 and r0["kls"][1] > 0 and r0["kls"][2] > 0  # max distils from itself
    assert r0["weights"] == r1["weights"]
