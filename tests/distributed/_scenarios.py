"""The searches, saves and training runs the distributed tests compare between ranks and world sizes.

Each scenario is a function ``(ctx) -> dict`` of JSON-able results. The same function runs inside
the pytest process (no process group: the single-process reference) and in every rank of a real
gloo group started by :mod:`tests.distributed._launch`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import modeopt_core as mo
from modeopt_autonas import EvolveSearcher, RandomSearcher, get_subnet_config, recalibrate_bn, select
from modeopt_autonas.space import get_search_space
from modeopt_core import distributed
from modeopt_fastnas.digits import DigitsResNet

WIDTHS = (8, 16, 32)
DUMMY = torch.zeros(1, 1, 8, 8)
EVOLVE = {"num_iters": 10, "population_size": 4, "candidate_size": 2, "seed": 3}


@dataclass
class Context:
    """Where a scenario may write files (shared by all ranks) and what it should do."""

    workdir: Path
    kill_at: int | None = None  # rank 0 SIGKILLs itself in this score call (kill-and-resume test)
    num_iters: int | None = None  # overrides EVOLVE's


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(data.target)


def batches(n: int, size: int = 32, offset: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed batches of real digits starting at image ``offset``."""
    x, y = _digits()
    return [(x[offset + i * size : offset + (i + 1) * size], y[offset + i * size : offset + (i + 1) * size])
            for i in range(n)]


class LossScore:
    """Negative cross-entropy on 256 fixed held-out digits (continuous: no ties); counts its calls."""

    def __init__(self, kill_at: int | None = None) -> None:
        x, y = _digits()
        self.x, self.y = x[1500:1756], y[1500:1756]
        self.calls = 0
        self.kill_at = kill_at

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at and distributed.is_main():
            os.kill(os.getpid(), signal.SIGKILL)
        was = model.training
        model.eval()
        loss = F.cross_entropy(model(self.x), self.y).item()
        model.train(was)
        return -loss


def supernet() -> nn.Module:
    torch.manual_seed(0)
    return mo.apply_mode(DigitsResNet(WIDTHS), [("autonas", {})])


def digest(model: nn.Module) -> str:
    """A hash of every tensor of the model's state (weights and batch-norm statistics)."""
    h = hashlib.sha256()
    for name, tensor in mo.unwrap_model(model).state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def exported_digest(model: nn.Module) -> str:
    """:func:`digest` of an exported copy: the selected subnet only.

    Batch-norm statistics of channels and blocks outside the selected subnet are leftovers of whichever
    candidates a rank happened to score, so they differ between world sizes (not between ranks: all
    ranks end with rank 0's buffers); the exported subnet does not hold them.
    """
    return digest(mo.export(copy.deepcopy(mo.unwrap_model(model))))


def _keep(results: dict[str, Any], *keys: str) -> dict[str, Any]:
    return json.loads(json.dumps({k: results[k] for k in keys}))


@contextmanager
def counting(module: Any, name: str, calls: list[str]) -> Iterator[None]:
    """Count calls of ``module.name`` (a real function, still called) by appending to ``calls``."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def _nas_config(ctx: Context, checkpoint: str | None = None, **overrides: Any) -> dict[str, Any]:
    return {
        "score_func": LossScore(ctx.kill_at),
        "data_loader": batches(8),
        "checkpoint": checkpoint,
        "verbose": False,
        **EVOLVE,
        **({"num_iters": ctx.num_iters} if ctx.num_iters else {}),
        **overrides,
    }


def _random_config(ctx: Context, **overrides: Any) -> dict[str, Any]:
    config = _nas_config(ctx, **overrides)
    for key in ("population_size", "candidate_size"):
        config.pop(key)
    return config


# --------------------------------------------------------------------------- AutoNAS
def autonas_evolve(ctx: Context) -> dict[str, Any]:
    """``mo.search`` with the autonas EvolveSearcher, checkpointed; counts checkpoint writes per rank."""
    import modeopt_core.base_searcher as base

    model = supernet()
    writes: list[str] = []
    with counting(base, "write_state_file", writes):
        _, res = mo.search(model, {"flops": "60%"}, DUMMY, _nas_config(ctx, str(ctx.workdir / "evolve.ckpt")))
    return {**_keep(res, "history", "best", "subnet", "iterations"), "digest": digest(model),
            "exported": exported_digest(model), "checkpoint_writes": len(writes)}


def autonas_random(ctx: Context) -> dict[str, Any]:
    """RandomSearcher called directly."""
    model = supernet()
    res = RandomSearcher().search(model, {"params": "50%"}, DUMMY, _random_config(ctx, num_iters=7))
    return {**_keep(res, "history", "best", "subnet"), "digest": digest(model), "exported": exported_digest(model)}


def evolve_into(ctx: Context, name: str) -> dict[str, Any]:
    """The search of :func:`autonas_evolve`, checkpointed to (and resumed from) ``workdir/name``."""
    model = supernet()
    _, res = mo.search(model, {"flops": "60%"}, DUMMY, _nas_config(ctx, str(ctx.workdir / name)))
    return {**_keep(res, "history", "best", "subnet", "iterations", "resumed"), "digest": digest(model),
            "exported": exported_digest(model)}


def resume_killed(ctx: Context) -> dict[str, Any]:
    """Resume (and finish) the search whose 2-rank run was SIGKILLed (``killed.ckpt``)."""
    return evolve_into(ctx, "killed.ckpt")


def resume_single(ctx: Context) -> dict[str, Any]:
    """Extend a search that a single process ran for fewer iterations (``single.ckpt``)."""
    return evolve_into(ctx, "single.ckpt")


def killed_search(ctx: Context) -> dict[str, Any]:
    """The search of :func:`autonas_evolve` into ``killed.ckpt`` (rank 0 dies at ``ctx.kill_at``)."""
    return evolve_into(ctx, "killed.ckpt")


# --------------------------------------------------------------------------- checkpoints and DDP
def save_restore(ctx: Context) -> dict[str, Any]:
    """Every rank calls save: only rank 0 writes; the file is complete on return; every rank restores."""
    import modeopt_core.checkpoint as ckpt

    model = supernet()
    select(model, {n: min(c) for n, c in _choices(model).items()})
    recalibrate_bn(model, batches(8))
    path = ctx.workdir / "model.safetensors"
    writes: list[str] = []
    with counting(ckpt, "write_container", writes):
        mo.save(model, path)
    exists_after_save = path.exists()
    restored = mo.restore(DigitsResNet(WIDTHS), path)
    x = batches(1)[0][0]
    model.eval()
    restored.eval()
    with torch.no_grad():
        same = bool(torch.equal(model(x), restored(x)))
    failed_save = _error(lambda: mo.save(model, ctx.workdir / "no-such-dir" / "model.safetensors"))
    return {"writes": len(writes), "exists_after_save": exists_after_save, "same_outputs": same,
            "digest": digest(restored), "subnet": get_subnet_config(restored), "failed_save": failed_save}


def save_one_rank(ctx: Context) -> dict[str, Any]:
    """``if rank == 0: save(...)`` writes and nobody waits; all-rank saves still pair; a save called on rank 1
    alone is an error after the (shortened) timeout, not a hang."""
    from modeopt_core._rank0_write import SAVE_TIMEOUT_ENV

    me = distributed.rank()
    model = supernet()
    solo = ctx.workdir / "solo.safetensors"
    for _ in range(3):  # rank 0 alone, several times: the other ranks never call save
        if me == 0:
            mo.save(model, solo)
    distributed.barrier()
    solo_restored = digest(mo.restore(DigitsResNet(WIDTHS), solo)) == digest(model)
    both = ctx.workdir / "both.safetensors"
    mo.save(model, both)  # every rank: rank 0 writes, the others return once it is complete
    both_complete = both.exists() and digest(mo.restore(DigitsResNet(WIDTHS), both)) == digest(model)
    mo.save(model, solo)  # every rank, on the path rank 0 saved alone before: still no hang
    distributed.barrier()
    os.environ[SAVE_TIMEOUT_ENV] = "2"
    try:
        lonely = _error(lambda: mo.save(model, ctx.workdir / "lonely.safetensors")) if me == 1 else None
    finally:
        del os.environ[SAVE_TIMEOUT_ENV]
    distributed.barrier()
    return {"solo_restored": solo_restored, "both_complete": both_complete, "lonely": lonely,
            "lonely_written": (ctx.workdir / "lonely.safetensors").exists()}


def _choices(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: hp.choices for n, hp in get_search_space(model).named_hparams(True)}


def _wrap(model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
    """DDP under a process group; plain ``DataParallel`` (on the CPU: a mere wrapper) without one."""
    return DDP(model, **ddp_kwargs) if distributed.is_distributed() else nn.DataParallel(model)


def wrapped_model(ctx: Context) -> dict[str, Any]:
    """apply_mode, search, save and restore given DDP-wrapped models."""
    torch.manual_seed(0)
    converted = mo.apply_mode(_wrap(DigitsResNet(WIDTHS)), [("autonas", {})])
    wrapped = _wrap(converted)
    _, res = mo.search(wrapped, {"flops": "60%"}, DUMMY, _nas_config(ctx, num_iters=4))
    direct = EvolveSearcher().search(wrapped, {"flops": "60%"}, DUMMY, _nas_config(ctx, num_iters=4))
    path = ctx.workdir / "wrapped.safetensors"
    mo.save(wrapped, path)
    restored = mo.restore(_wrap(DigitsResNet(WIDTHS)), path)
    return {
        "converted_is_plain": not isinstance(converted, (DDP, nn.DataParallel)),
        "modes": mo.applied_modes(wrapped),
        "best": json.loads(json.dumps(res["best"])),
        "direct_best": json.loads(json.dumps(direct["best"])),
        "subnet_via_wrapper": get_subnet_config(wrapped),
        "restored_subnet": get_subnet_config(restored),
        "restored_digest": digest(restored),
        "digest": digest(converted),
    }


def supernet_training(ctx: Context) -> dict[str, Any]:
    """Supernet training under DDP with different data per rank: every rank trains the same subnets."""
    model = supernet()
    space = get_search_space(model)
    trained = _wrap(model, find_unused_parameters=True)  # blocks skipped by depth get no gradient
    opt = torch.optim.SGD(trained.parameters(), lr=0.05)
    subnets = []
    trained.train()
    for x, y in batches(4, size=16, offset=200 + 64 * distributed.rank()):
        opt.zero_grad()
        F.cross_entropy(trained(x), y).backward()
        opt.step()
        subnets.append(space.config())
    # parameters only: DDP re-sends rank 0's buffers at the start of the next forward, not after the last
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return {"subnets": subnets, "weights": weights}


# --------------------------------------------------------------------------- FastNAS
FASTNAS_TOL = 0.01  # drops of the untrained CNN are noisy: some hparams stop early, others never


class FailingScore(LossScore):
    """Raises in its ``fail_at``-th call (a search that dies part-way, leaving its checkpoint)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def __call__(self, model: nn.Module) -> float:
        if self.calls + 1 == self.fail_at:
            raise RuntimeError("stopped on purpose")
        return super().__call__(model)


def _prune(ctx: Context, checkpoint: str, score: Any = None) -> dict[str, Any]:
    import modeopt_core.base_searcher as base
    from modeopt_fastnas import prune

    torch.manual_seed(0)
    model = _wrap(DigitsResNet(WIDTHS))  # prune accepts a wrapped model too
    writes: list[str] = []
    config = {"score_func": score or LossScore(), "data_loader": batches(8), "verbose": False,
              "zero_drop_tol": FASTNAS_TOL, "checkpoint": str(ctx.workdir / checkpoint)}
    with counting(base, "write_state_file", writes):
        pruned, res = prune(model, {"flops": "50%"}, DUMMY, config)
    keep = ("sensitivity_raw", "sensitivity_map", "subnet", "threshold", "num_score_evals", "num_score_evals_total",
            "flops_ratio", "original_score", "resumed")
    return {**_keep(res, *keep), "digest": digest(pruned), "exported": exported_digest(pruned),
            "checkpoint_writes": len(writes)}


def fastnas_prune(ctx: Context) -> dict[str, Any]:
    """``modeopt_fastnas.prune`` of the digits CNN: the sensitivity map is shared out across ranks."""
    return _prune(ctx, "fastnas.ckpt")


def fastnas_resume(ctx: Context) -> dict[str, Any]:
    """Finish the map of a single process that failed part-way (``fastnas_partial.ckpt``)."""
    return _prune(ctx, "fastnas_partial.ckpt")


def fastnas_partial(ctx: Context, fail_at: int) -> str:
    """Run :func:`fastnas_prune` in one process until its ``fail_at``-th score call raises."""
    try:
        _prune(ctx, "fastnas_partial.ckpt", FailingScore(fail_at))
    except RuntimeError as exc:
        return str(exc)
    return "did not fail"


class _RankTimer:
    """The op-cost timer, but a different machine on every rank (costs scaled by 1 + rank): a rank
    that measured its own table would predict and report other latencies than rank 0. ReLUs cost per
    element, so the prediction is inexact and the measured check of the choice refits the model."""

    def __init__(self) -> None:
        from tests._fake_timer import OpCostTimer

        self.inner, self.rank = OpCostTimer(activation_element_s=2e-8), distributed.rank()

    def __call__(self, fn: Callable[[], Any]) -> float:
        return self.inner(fn) * (1 + self.rank)


def fastnas_latency(ctx: Context) -> dict[str, Any]:
    """A FastNAS search to a latency budget: rank 0 measures the table, every rank uses it."""
    from modeopt_fastnas import prune

    torch.manual_seed(0)
    options = {"timer": _RankTimer(), "cache_dir": str(ctx.workdir / "latency-cache"), "runs": 1, "warmup": 0,
               "calibration_runs": 1, "report_runs": 1}
    config = {"score_func": LossScore(), "data_loader": batches(8), "verbose": False, "zero_drop_tol": FASTNAS_TOL,
              "latency_options": options}
    pruned, res = prune(_wrap(DigitsResNet(WIDTHS)), {"latency": "60%"}, DUMMY, config)
    lat = res["latency"]
    return {"subnet": res["subnet"], "latency": [lat["before"], lat["after"], lat["measured_after"]],
            "skipped": lat["slower_widths_skipped"], "exported": exported_digest(pruned),
            "verification": [lat["verification"]["refits"], [r["measured_ratio"] for r in lat["verification"]["rounds"]]],
            "cache_files": sorted(p.name for p in (ctx.workdir / "latency-cache").glob("*.safetensors"))}


# --------------------------------------------------------------------------- the helpers themselves
def _error(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def primitives(ctx: Context) -> dict[str, Any]:
    """Object collectives, sharding, error propagation and rank-0-first blocks on a real group."""
    me = distributed.rank()
    value = {"rank": me, (1, "a"): (2.5, None), "nan": float("nan"), "t": torch.arange(3) * (me + 1)}
    gathered = distributed.all_gather_objects(value)
    sent = distributed.broadcast_object({"from": me, "tensor": torch.full((2,), float(me))}, src=1)
    order_file = ctx.workdir / "first.txt"
    with distributed.main_process_first():
        order_file.write_text(order_file.read_text() + str(me) if order_file.exists() else str(me))
    distributed.barrier()

    def fail_on_rank_1() -> int:
        if me == 1:
            raise ValueError("boom on one rank")
        return me

    return {
        "rank": me,
        "world_size": distributed.world_size(),
        "is_main": distributed.is_main(),
        "gathered_ranks": [g["rank"] for g in gathered],
        "gathered_tuple": [list(g[(1, "a")]) for g in gathered],
        "gathered_nan": [g["nan"] != g["nan"] for g in gathered],
        "gathered_tensors": [g["t"].tolist() for g in gathered],
        "broadcast": {"from": sent["from"], "tensor": sent["tensor"].tolist()},
        "shard": distributed.shard(range(7)),
        "first_order": order_file.read_text(),
        "gather_error": _error(lambda: distributed.run_and_gather(fail_on_rank_1)),
        "main_result": distributed.run_on_main(lambda: f"computed on rank {me}"),
        "unsendable": _error(lambda: distributed.all_gather_objects(object() if me == 1 else 1)),
        "after_errors": distributed.all_gather_objects(me),  # the group still works
    }


def disagreement(ctx: Context) -> dict[str, Any]:
    """Ranks that search differently, or a score function failing on one rank: errors, not hangs."""
    me = distributed.rank()
    differ = _error(lambda: mo.search(supernet(), {"flops": "60%"}, DUMMY, _nas_config(ctx, num_iters=4 + me)))

    def score(model: nn.Module) -> float:
        if me == 1:
            raise RuntimeError("score failed on rank 1")
        return LossScore()(model)

    failing = _error(lambda: mo.search(supernet(), {"flops": "60%"}, DUMMY, _nas_config(ctx, score_func=score)))
    return {"differ": differ, "failing_score": failing, "seed_used": _seed_used(ctx)}


def _seed_used(ctx: Context) -> list[Any]:
    """Every rank passes another seed: rank 0's is used, so all ranks draw the same candidates."""
    config = _random_config(ctx, num_iters=3, seed=100 + distributed.rank())
    res = RandomSearcher().search(supernet(), {"flops": "60%"}, DUMMY, config)
    return [c["config"] for c in res["history"]]


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    f.__name__: f
    for f in (autonas_evolve, autonas_random, resume_killed, resume_single, killed_search, save_restore,
              save_one_rank, wrapped_model, supernet_training, primitives, disagreement, fastnas_prune, fastnas_resume,
              fastnas_latency)
}
