"""Real 2-process gloo groups: searches, checkpoints and DDP give the same results on every rank and
the same results as one process.

Two launches serve all tests (starting Python with torch costs seconds): a search that rank 0 kills
mid-way, then one run of every scenario (which also resumes the killed search). The single-process
references run in this process with one thread, like every rank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from . import _scenarios as sc
from ._launch import Launch, results

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_gloo_available(), reason="needs gloo")

SCENARIOS = ["autonas_evolve", "autonas_random", "resume_killed", "resume_single", "save_restore", "save_one_rank",
             "wrapped_model", "supernet_training", "primitives", "disagreement", "fastnas_prune", "fastnas_resume",
             "fastnas_latency"]
KILL_AT = 3  # rank 0's third score call: after two finished rounds (two checkpoints)
FASTNAS_FAIL_AT = 20  # a single-process FastNAS search dies in its 20th score call (part of the map done)


class Runs:
    def __init__(self, root: Path) -> None:
        self.dist_dir = root / "dist"
        self.single_dir = root / "single"
        self.dist_dir.mkdir()
        self.single_dir.mkdir()
        self.kill_codes: list[int] = []
        self.partial: dict[str, Any] = {}
        self.single: dict[str, dict[str, Any]] = {}

    def ranks(self, scenario: str) -> list[dict[str, Any]]:
        return results(self.dist_dir, scenario)

    def run_single(self, key: str, fn: Any, *args: Any) -> None:
        self.single[key] = json.loads(json.dumps(fn(sc.Context(self.single_dir), *args)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    r = Runs(tmp_path_factory.mktemp("distributed"))
    # 1. a 2-rank AutoNAS search that rank 0's SIGKILL ends mid-way; meanwhile, in this process, a
    #    search of half the iterations and a FastNAS search failing part-way leave checkpoints
    killed = Launch(r.dist_dir, ["killed_search"], kill_at=KILL_AT)
    r.partial["autonas"] = sc.evolve_into(sc.Context(r.dist_dir, num_iters=sc.EVOLVE["num_iters"] // 2), "single.ckpt")
    r.partial["fastnas"] = sc.fastnas_partial(sc.Context(r.single_dir), FASTNAS_FAIL_AT)
    r.kill_codes = killed.wait()
    shutil.copy(r.dist_dir / "killed.ckpt", r.single_dir / "killed.ckpt")
    shutil.copy(r.single_dir / "fastnas_partial.ckpt", r.dist_dir / "fastnas_partial.ckpt")
    # 2. every scenario on 2 ranks (resuming those checkpoints); the single-process references meanwhile
    main = Launch(r.dist_dir, SCENARIOS)
    for name in ("autonas_evolve", "autonas_random", "save_restore", "wrapped_model", "supernet_training",
                 "fastnas_prune", "fastnas_resume", "fastnas_latency"):
        r.run_single(name, sc.SCENARIOS[name])
    r.run_single("resume_killed_1rank", sc.evolve_into, "killed.ckpt")
    main.wait()
    return r


def _same_on_ranks(ranks: list[dict[str, Any]], *keys: str) -> None:
    for key in keys:
        assert ranks[0][key] == ranks[1][key], f"{key} differs between ranks"


def test_evolve_search_same_on_every_rank_and_as_one_process(runs: Runs) -> None:
    ranks, single = runs.ranks("autonas_evolve"), runs.single["autonas_evolve"]
    _same_on_ranks(ranks, "history", "best", "subnet", "iterations", "digest", "exported")
    for key in ("history", "best", "subnet", "iterations", "exported"):
        assert ranks[0][key] == single[key], f"{key}: 2 ranks differ from 1 process"
    assert single["iterations"] == sc.EVOLVE["num_iters"] and single["best"] is not None
    assert len({c["score"] for c in single["history"] if c["score"] is not None}) > 3  # real, distinct scores


def test_only_rank_0_writes_search_checkpoints(runs: Runs) -> None:
    ranks = runs.ranks("autonas_evolve")
    assert ranks[0]["checkpoint_writes"] > 0
    assert ranks[1]["checkpoint_writes"] == 0


def test_random_searcher_same_on_every_rank_and_as_one_process(runs: Runs) -> None:
    ranks, single = runs.ranks("autonas_random"), runs.single["autonas_random"]
    _same_on_ranks(ranks, "history", "best", "subnet", "digest", "exported")
    for key in ("history", "best", "subnet", "exported"):
        assert ranks[0][key] == single[key]


def test_resume_after_kill_with_the_same_and_another_world_size(runs: Runs) -> None:
    assert runs.kill_codes[0] == -9  # rank 0 really died of SIGKILL mid-search
    uninterrupted = runs.single["autonas_evolve"]
    two_ranks = runs.ranks("resume_killed")
    one_rank = runs.single["resume_killed_1rank"]
    _same_on_ranks(two_ranks, "history", "best", "digest")
    for resumed in (two_ranks[0], one_rank):
        assert resumed["resumed"] is True
        for key in ("history", "best", "subnet", "iterations", "exported"):
            assert resumed[key] == uninterrupted[key], f"{key} differs after the kill"


def test_two_ranks_extend_a_single_process_search(runs: Runs) -> None:
    assert runs.partial["autonas"]["iterations"] == sc.EVOLVE["num_iters"] // 2
    ranks, uninterrupted = runs.ranks("resume_single"), runs.single["autonas_evolve"]
    _same_on_ranks(ranks, "history", "best", "digest")
    assert ranks[0]["resumed"] is True
    for key in ("history", "best", "subnet", "iterations", "exported"):
        assert ranks[0][key] == uninterrupted[key]


def test_save_writes_once_and_every_rank_restores(runs: Runs) -> None:
    ranks, single = runs.ranks("save_restore"), runs.single["save_restore"]
    assert [r["writes"] for r in ranks] == [1, 0]
    assert all(r["exists_after_save"] and r["same_outputs"] for r in ranks)
    _same_on_ranks(ranks, "digest", "subnet")
    assert ranks[0]["digest"] == single["digest"]
    # rank 0 cannot write: it raises the CheckpointError, the other ranks learn of it (no hang)
    assert ranks[0]["failed_save"].startswith("CheckpointError: cannot write")
    assert ranks[1]["failed_save"].startswith("DistributedError: rank 0 failed: CheckpointError: cannot write")
    assert single["failed_save"] == ranks[0]["failed_save"].replace(str(runs.dist_dir), str(runs.single_dir))


def test_save_on_rank_0_alone_works_and_a_lonely_save_on_another_rank_fails_fast(runs: Runs) -> None:
    r0, r1 = runs.ranks("save_one_rank")
    for r in (r0, r1):
        assert r["solo_restored"] and r["both_complete"]
        assert not r["lonely_written"]
    assert r0["lonely"] is None
    assert r1["lonely"].startswith("DistributedError: save(")
    assert "rank 0 did not begin saving that path within 2 s" in r1["lonely"]
    assert "if rank == 0: save(...)" in r1["lonely"]


def test_ddp_wrapped_models_are_accepted(runs: Runs) -> None:
    ranks, single = runs.ranks("wrapped_model"), runs.single["wrapped_model"]
    _same_on_ranks(ranks, "best", "direct_best", "restored_subnet", "restored_digest", "digest")
    for r in ranks:
        assert r["converted_is_plain"] and r["modes"] == ["autonas"]
        assert r["best"] == r["direct_best"]  # mo.search and the searcher itself unwrap alike
        assert r["restored_subnet"] == r["subnet_via_wrapper"] == r["best"]["config"]
    assert ranks[0]["best"] == single["best"]


def test_supernet_training_samples_the_same_subnet_on_every_rank(runs: Runs) -> None:
    ranks, single = runs.ranks("supernet_training"), runs.single["supernet_training"]
    _same_on_ranks(ranks, "subnets", "weights")
    assert ranks[0]["subnets"] == single["subnets"]  # the sampler's seed, not the rank, decides
    assert len({json.dumps(s, sort_keys=True) for s in single["subnets"]}) > 1


def test_object_collectives_sharding_and_errors(runs: Runs) -> None:
    r0, r1 = runs.ranks("primitives")
    for r in (r0, r1):
        assert r["world_size"] == 2
        assert r["gathered_ranks"] == [0, 1]
        assert r["gathered_tuple"] == [[2.5, None], [2.5, None]]
        assert r["gathered_nan"] == [True, True]
        assert r["gathered_tensors"] == [[0, 1, 2], [0, 2, 4]]
        assert r["broadcast"] == {"from": 1, "tensor": [1.0, 1.0]}
        assert r["first_order"] == "01"  # rank 0 ran the block before rank 1
        assert r["main_result"] == "computed on rank 0"
        assert r["after_errors"] == [0, 1]
    assert (r0["is_main"], r1["is_main"]) == (True, False)
    assert sorted(r0["shard"] + r1["shard"]) == list(range(7)) and not set(r0["shard"]) & set(r1["shard"])
    assert r0["gather_error"] == "DistributedError: rank 1 failed: ValueError: boom on one rank"
    assert r1["gather_error"] == "ValueError: boom on one rank"
    assert "rank 1 failed: cannot send this object" in r0["unsendable"]
    assert "builtins.object" in r1["unsendable"]


def test_ranks_that_disagree_raise_instead_of_hanging(runs: Runs) -> None:
    r0, r1 = runs.ranks("disagreement")
    for r in (r0, r1):
        assert r["differ"].startswith("DistributedError: rank 1 runs a different search than rank 0")
        assert "config.num_iters: 4 -> 5" in r["differ"]
    assert r0["failing_score"] == "DistributedError: rank 1 failed: RuntimeError: score failed on rank 1"
    assert r1["failing_score"] == "RuntimeError: score failed on rank 1"


def test_rank_0_seed_is_used_on_every_rank(runs: Runs) -> None:
    r0, r1 = runs.ranks("disagreement")
    assert r0["seed_used"] == r1["seed_used"]
    assert r0["seed_used"] == sc._seed_used(sc.Context(runs.single_dir))  # rank 0's seed (100) in one process


FASTNAS_SAME = ("sensitivity_raw", "sensitivity_map", "subnet", "threshold", "num_score_evals", "num_score_evals_total",
                "flops_ratio", "original_score", "exported")


def test_fastnas_map_shared_out_gives_the_one_process_map_and_subnet(runs: Runs) -> None:
    ranks, single = runs.ranks("fastnas_prune"), runs.single["fastnas_prune"]
    _same_on_ranks(ranks, *FASTNAS_SAME, "digest")
    for key in FASTNAS_SAME:
        assert ranks[0][key] == single[key], f"{key}: 2 ranks differ from 1 process"
    raw = single["sensitivity_raw"]
    stopped_early = [n for n, entry in raw.items() if entry[-2][1] is None]  # ~0 drop before the max
    assert stopped_early and len(stopped_early) < len(raw)  # the early-stop rule was exercised
    assert single["flops_ratio"] <= 0.5
    assert (ranks[0]["checkpoint_writes"], ranks[1]["checkpoint_writes"]) == (single["checkpoint_writes"], 0)


def test_fastnas_resumes_a_single_process_map_on_two_ranks(runs: Runs) -> None:
    assert runs.partial["fastnas"] == "stopped on purpose"
    uninterrupted = runs.single["fastnas_prune"]
    ranks, one_rank = runs.ranks("fastnas_resume"), runs.single["fastnas_resume"]
    _same_on_ranks(ranks, *FASTNAS_SAME, "digest")
    for resumed in (ranks[0], one_rank):
        assert resumed["resumed"] is True
        assert 0 < resumed["num_score_evals"] < uninterrupted["num_score_evals"]  # finished hparams not redone
        for key in ("sensitivity_raw", "subnet", "threshold", "num_score_evals_total", "exported"):
            assert resumed[key] == uninterrupted[key]
    assert ranks[0]["num_score_evals"] == one_rank["num_score_evals"]


def test_fastnas_latency_search_uses_rank_0s_table_on_every_rank(runs: Runs) -> None:
    """Each rank's timer is a different "machine"; rank 0 measures, so all ranks (and one process,
    whose rank is 0) pick the same subnet with the same predictions."""
    ranks, single = runs.ranks("fastnas_latency"), runs.single["fastnas_latency"]
    _same_on_ranks(ranks, "subnet", "latency", "skipped", "exported", "verification")
    for key in ("subnet", "latency", "skipped", "exported", "verification"):
        assert ranks[0][key] == single[key], key
    assert ranks[0]["verification"][0] >= 1  # the measured check refitted the model on every rank alike
    assert len(ranks[0]["cache_files"]) == 1  # only rank 0's context was written
