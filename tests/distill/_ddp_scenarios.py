"""Distillation under DDP: the scenarios each rank of a real gloo group runs (and the single-process references).

A scenario is ``(workdir, data_ranks) -> dict``: it trains on the batches of the ranks in ``data_ranks``
(one rank's share under DDP; every rank's, concatenated, in the single-process reference).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import modeopt_autonas as mtn
import modeopt_core as mo
import modeopt_distill as md
from modeopt_fastnas.digits import DigitsResNet
from tests.distill import _models

STEPS = 3
PER_RANK = 8


def _batch(step: int, ranks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_models.batch(PER_RANK, seed=1000 * step + r) for r in ranks]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _wrap(model: nn.Module, **kwargs: Any) -> nn.Module:
    return DDP(model, **kwargs) if dist.is_available() and dist.is_initialized() else model


def _digest(tensors: list[torch.Tensor]) -> str:
    return hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in tensors)).hexdigest()


def distil_ddp(workdir: Path, ranks: list[int]) -> dict[str, Any]:
    """A BN-free student distilled from a factory-built teacher (built on every rank), through the DDP wrapper."""
    student = _models.student(bn=False)
    config = {"teacher": "tests.distill._models:teacher_no_bn", "temperature": 2.0, "student_loss_weight": 0.5,
              "pairs": [{}, {"student": "features", "loss": "mse", "adapter": True, "weight": 0.3}]}
    student = mo.apply_mode(student, [("kd_loss", config)], mode_kwargs={"dummy_input": torch.zeros(_models.INPUT)})
    model = _wrap(student)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(STEPS):
        x, y = _batch(step, ranks)
        opt.zero_grad()
        loss = md.compute_kd_loss(model, F.cross_entropy(model(x), y))  # the wrapper is unwrapped for us
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    teacher = student.__dict__["_modeopt_distiller"].teacher
    return {
        "params": [p.detach().flatten().tolist() for p in student.parameters()],
        "names": [n for n, _ in student.named_parameters()],
        "losses": losses,
        "teacher": _digest(list(teacher.state_dict().values())),
        "modes": mo.applied_modes(model),
    }


def distil_supernet_ddp(workdir: Path, ranks: list[int]) -> dict[str, Any]:
    """AutoNAS sandwich sampling under DDP, every sampled subnet distilled from the full model (in place)."""
    torch.manual_seed(0)
    supernet = mo.apply_mode(DigitsResNet((8, 16, 16)), [("autonas", {"sampling": "sandwich", "seed": 1}),
                                                          ("kd_loss", {"teacher_subnet": "max", "temperature": 2.0})])
    space = mtn.get_search_space(supernet)
    model = _wrap(supernet, find_unused_parameters=True)  # blocks skipped by depth get no gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    subnets, kls = [], []
    for step in range(STEPS):
        x, y = _batch(step, ranks)
        opt.zero_grad()
        out = model(x)
        subnets.append(space.config())
        loss, terms = mo.unwrap_model(model).compute_kd_loss(F.cross_entropy(out, y), return_terms=True)
        loss.backward()
        opt.step()
        kls.append(float(terms["output kl_div"].detach()))
    return {"subnets": subnets, "kls": kls, "weights": _digest(list(supernet.parameters()))}


SCENARIOS = {"distil_ddp": distil_ddp, "distil_supernet_ddp": distil_supernet_ddp}
