"""Pruning in stages: several FastNAS searches to budgets falling geometrically, each on the last one's export.

A sensitivity map narrows one layer with all others at full width, and the search adds the drops up
as if layers did not interact. Far below the original (30 % of its FLOPs) they do: on the digits CNN
a one-shot search predicts 99.1 % and measures 93.8 %. A map measured on an intermediate result sees
the interactions of the layers that are already narrower, so a second stage prunes by drops that
hold near the result (96.2 % at 30 % in two stages, ``docs/benchmarks.md``).

Stage ``k`` of ``n`` is given ``reference * fraction ** (k / n)`` for each limit (the last stage the
user's limit itself), where ``fraction = limit / reference`` and the reference is the model's
FLOPs/params before the first stage. Between stages the result is exported and converted again, so
the model records ``fastnas, export_nas, fastnas, ...`` and restores from a checkpoint like any
chain of modes.

A later stage keeps each channel group's width step of the first stage: the adaptive divisor
(``min_width_steps``) would otherwise halve it for the narrower widths (a 128 group at step 16,
pruned to 112, would get step 8), giving the map more widths to measure and the result widths such
as 104 that run slower than a multiple of 16 on most hardware. The choices of a later stage's
groups are restricted to the multiples of their first-stage step (``Hparam.restrict``), the
original width always kept.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from torch import nn

from modeopt_autonas.space import get_search_space, has_search_space
from modeopt_core import Constraints, ForwardProfiler, applied_modes, apply_mode, export, search
from modeopt_core.sdk import rollback_on_error

__all__ = ["keep_width_steps", "prune_in_stages", "stage_limits", "width_steps"]


def stage_limits(limits: dict[str, float], reference: dict[str, float], stages: int) -> list[dict[str, float]]:
    """The absolute limits of each stage: geometric steps from ``reference`` down to ``limits``."""
    out = []
    for k in range(1, stages + 1):
        if k == stages:
            out.append(dict(limits))
        else:
            out.append({n: reference[n] * (limits[n] / reference[n]) ** (k / stages) for n in limits})
    return out


def _group_key(space: Any, gid: int) -> frozenset[tuple[str, str]]:
    """A channel group by the layers and roles it binds: the same in a stage's export and the next stage."""
    return frozenset((m.module, m.role) for m in space.members(gid))


def width_steps(space: Any) -> dict[frozenset[tuple[str, str]], int]:
    """The step between the choices of every configurable channel group (its original width aside)."""
    steps = {}
    for group in space.structure.groups:
        hp = space.group_hparam(group.id)
        below = [c for c in hp.choices if c != hp.original]
        if hp.is_configurable and below:
            steps[_group_key(space, group.id)] = math.gcd(*below)
    return steps


def keep_width_steps(space: Any, steps: dict[frozenset[tuple[str, str]], int]) -> None:
    """Restrict each channel group of ``space`` known to ``steps`` to the multiples of its step."""
    for group in space.structure.groups:
        step = steps.get(_group_key(space, group.id))
        if step is not None and step > 1:
            hp = space.group_hparam(group.id)
            hp.restrict([c for c in hp.choices if c % step == 0])


def _stage_checkpoint(path: Any, stage: int, stages: int) -> str:
    """``search.ckpt`` -> ``search.stage1-of-2.ckpt``: each stage resumes from its own checkpoint."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.stage{stage}-of-{stages}{p.suffix}"))


def prune_in_stages(
    model: nn.Module,
    constraints: Constraints,
    dummy_input: Any,
    config: dict[str, Any],
    mode_config: dict[str, Any],
    stages: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """``prune(..., stages=stages)`` (see the module doc); results are the last stage's, relative to the
    original model, with ``stages`` listing each stage's budget, result, evaluations and seconds."""
    profiler = ForwardProfiler(model, dummy_input)
    names = constraints.names
    reference = profiler.measure(sorted({"flops", "params", *names}))
    limits = constraints.resolve(profiler).limits
    # the whole chain is undone on an error, weights included: a finished stage's channel sort and BN
    # statistics are not undone by the next stage's own rollback, so their values are kept here
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    summaries: list[dict[str, Any]] = []
    evals = evals_total = 0
    try:
        with rollback_on_error(model):
            current = model
            for k, stage in enumerate(stage_limits(limits, reference, stages), start=1):
                start = time.perf_counter()  # the stage's conversion, search and export
                if not (k == 1 and applied_modes(current)[-1:] == ["fastnas"] and has_search_space(current)):
                    current = apply_mode(current, [("fastnas", mode_config)])
                if k == 1:
                    steps = width_steps(get_search_space(current))
                else:
                    keep_width_steps(get_search_space(current), steps)
                stage_config = dict(config)
                if stage_config.get("checkpoint") is not None:
                    stage_config["checkpoint"] = _stage_checkpoint(stage_config["checkpoint"], k, stages)
                current, results = search(current, stage, dummy_input, stage_config)
                evals += results["num_score_evals"]
                evals_total += results["num_score_evals_total"]
                summaries.append({
                    "stage": k,
                    "limits": stage,
                    "flops_ratio": results["flops"]["after"] / reference["flops"],
                    "params_ratio": results["params"]["after"] / reference["params"],
                    "original_score": results["original_score"],
                    "predicted_score": results["predicted_score"],
                    "num_score_evals": results["num_score_evals"],
                })
                if k < stages:
                    current = export(current)
                summaries[-1]["seconds"] = time.perf_counter() - start
    except BaseException:
        for key, value in model.state_dict(keep_vars=True).items():
            if key in saved and saved[key].shape == value.shape:
                value.data.copy_(saved[key])
        raise
    results["stages"] = summaries
    results["original_score"] = summaries[0]["original_score"]
    results["num_score_evals"], results["num_score_evals_total"] = evals, evals_total
    for name in ("flops", "params"):
        results[name] = {"before": reference[name], "after": results[name]["after"]}
        results[f"{name}_ratio"] = results[name]["after"] / reference[name]
    return current, results
