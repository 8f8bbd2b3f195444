"""``prune``: FastNAS in one call (apply the ``fastnas`` mode, then search to a budget)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from modeopt_autonas.space import has_search_space
from modeopt_core import ArgumentError, ConstraintError, Constraints, applied_modes, apply_mode, search, unwrap_model
from modeopt_core.sdk import rollback_on_error

from ._stages import prune_in_stages

__all__ = ["prune"]


def prune(
    model: nn.Module,
    constraints: Mapping[str, Any],
    dummy_input: Any,
    config: Mapping[str, Any] | None = None,
    *,
    mode_config: Mapping[str, Any] | None = None,
    stages: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Convert ``model`` with the ``fastnas`` mode (unless it already is) and search it to the budget.

    Args:
        constraints: ``{"flops": "50%"}``, ``{"params": 1e6}``, ``{"latency": "60%"}`` (of the original's
            measured latency, or milliseconds) or several of them (upper limits).
        dummy_input: an input for ``model`` (counts FLOPs and is what latency is timed on; its batch size
            scales absolute FLOP and latency limits).
        config: the search config (``score_func`` is required; see :class:`~modeopt_fastnas.BinarySearcher`).
        mode_config: the ``fastnas`` mode config (rules per module type); default: the FastNAS defaults.
        stages: prune in this many steps to budgets falling geometrically (``"30%"`` in 2 stages:
            54.8 %, then 30 % of the original), with a new sensitivity map of each stage's result.
            Layers interact, so a map measured nearer the result predicts it better (see
            ``docs/fastnas.md``, "Pruning in stages"); each stage costs a map of its own (2-3x the
            one-stage time on the digits CNN). FLOPs/params budgets only.

    Returns:
        ``(model, results)``: the model at the chosen subnet (still a search space: export it with
        ``modeopt_core.export(model)``) and the search results (sensitivity map, subnet, FLOPs/params
        before and after, evaluations, timings; with a latency limit, predicted and measured latency).

    Everything that can be checked up front is checked before the model is converted: the model, a
    non-empty budget, a dummy input, the search config and the mode config. If the search fails
    afterwards (e.g. an unreachable budget, or a ``score_func`` returning NaN), the model is put back
    as it was: unconverted (when ``prune`` converted it) with its weights bit for bit unchanged.
    """
    from .searcher import BinarySearcher

    if not isinstance(model, nn.Module):
        raise ArgumentError(f"prune() argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    parsed = Constraints.parse(constraints)
    if not parsed:
        raise ConstraintError(
            "FastNAS needs a budget: pass constraints such as {'flops': '50%'} and/or {'params': 2e6}"
        )
    if dummy_input is None:
        raise ArgumentError("prune() needs a dummy_input (an input the model accepts) to count FLOPs and params")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ArgumentError(f"prune() argument 'stages' must be an int >= 1 (1 = one map and one search), got {stages!r}")
    if stages > 1 and "latency" in parsed.names:
        raise ConstraintError(
            "prune(stages > 1) supports flops/params budgets; a latency budget is measured against the original "
            "model, which later stages no longer see: use stages=1 with a latency limit"
        )
    BinarySearcher().sanitize_search_config(config)
    inner = unwrap_model(model)
    if stages > 1:
        return prune_in_stages(inner, parsed, dummy_input, dict(config or {}), dict(mode_config or {}), stages)
    if applied_modes(inner)[-1:] == ["fastnas"] and has_search_space(inner):
        return search(model, constraints, dummy_input, dict(config or {}))
    with rollback_on_error(inner):
        converted = apply_mode(inner, [("fastnas", dict(mode_config or {}))])
        return search(converted, constraints, dummy_input, dict(config or {}))
