"""The coverage check of one model (the timm zoo test and ``bench/timm_zoo.py`` share it).

Convert with ``apply_mode(model, ["fastnas"])`` as a user would, then for the min and a random subnet:
the supernet runs and gives finite outputs, an export of a copy equals it (``max|a - b| <= 1e-4 *
max(1, max|a|)``), and the analytic FLOPs agree with ``torch.utils.flop_counter`` on the export within
1% (parameters exactly).
"""

from __future__ import annotations

import copy
import random
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_autonas as mtn
import modeopt_core as mo

__all__ = ["Outcome", "check_model"]

TOLERANCE = 1e-4


@dataclass
class Outcome:
    """What happened to one model: ``pass``, ``no-space`` (ConvertError), ``check-fail`` or ``crash``."""

    name: str
    status: str
    hparams: int = 0
    convert_s: float = 0.0
    detail: str = ""
    frozen: list[str] = field(default_factory=list)  # the analysis' reasons, most frequent first


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """The max abs difference relative to ``max(1, max|b|)``."""
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def _frozen_reasons(space: mtn.SearchSpace) -> list[str]:
    counts: dict[str, int] = {}
    for reason in space.frozen.values():
        for part in reason.split("; "):
            if part not in ("single choice", "the rules leave a single width", "fed by model input", "model output"):
                counts[part] = counts.get(part, 0) + 1
    return sorted(counts, key=lambda r: -counts[r])


def check_model(name: str, model: nn.Module, x: torch.Tensor) -> Outcome:
    """Run the coverage check on ``model`` (eval mode, random weights) with input ``x``."""
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        converted = mo.apply_mode(model, ["fastnas"])
    except mo.ConvertError as exc:
        return Outcome(name, "no-space", convert_s=time.perf_counter() - start, detail=str(exc))
    except Exception as exc:
        return Outcome(name, "crash", detail=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
    convert_s = time.perf_counter() - start
    space = mtn.get_search_space(converted)
    outcome = Outcome(name, "pass", sum(1 for _ in space.named_hparams(True)), convert_s, frozen=_frozen_reasons(space))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profiler = mtn.SubnetProfiler(space, x)
            rng = random.Random(zlib.crc32(name.encode()))
            for mode in ("min", "random"):
                mtn.sample(converted, mode, seed=rng)
                with torch.no_grad():
                    y = converted(x)
                if not torch.isfinite(y).all():
                    return _failed(outcome, f"{mode}: non-finite outputs")
                exported = mo.export(copy.deepcopy(converted)).eval()
                y_exported, counted = _counted_forward(exported, x)
                diff = _close(y_exported, y)
                if diff > TOLERANCE:
                    return _failed(outcome, f"{mode}: export differs from the supernet by {diff:.3g}")
                flops = profiler.flops()
                if abs(flops - counted) > 0.01 * max(counted, 1):
                    return _failed(outcome, f"{mode}: analytic FLOPs {flops} vs flop_counter {counted}")
                params = sum(p.numel() for p in exported.parameters())
                if profiler.params() != params:
                    return _failed(outcome, f"{mode}: analytic params {profiler.params()} vs {params}")
    except Exception as exc:
        return _failed(outcome, f"{type(exc).__name__}: {exc}")
    return outcome


def _counted_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The output and ``flop_counter``'s FLOPs of one forward. Without gradients first: FlopCounterMode
    under ``no_grad`` trips on a no-grad view of a parameter fed to a submodule (timm CaiT/PiT's
    ``cls_token.expand``), so those models are counted with gradients enabled."""
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            y = model(x)
    except AssertionError:
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            y = model(x).detach()
    return y, counter.get_total_flops()


def _failed(outcome: Outcome, detail: str) -> Outcome:
    outcome.status, outcome.detail = "check-fail", detail
    return outcome
