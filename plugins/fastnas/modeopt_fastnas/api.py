"""``prune``: FastNAS in one call (apply the ``fastnas`` mode, then search to a budget)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from modeopt_autonas.space import has_search_space
from modeopt_core import Constraints, applied_modes, apply_mode, search

__all__ = ["prune"]


def prune(
    model: nn.Module,
    constraints: Mapping[str, Any],
    dummy_input: Any,
    config: Mapping[str, Any] | None = None,
    *,
    mode_config: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Convert ``model`` with the ``fastnas`` mode (unless it already is) and search it to the budget.

    Args:
        constraints: ``{"flops": "50%"}``, ``{"params": 1e6}``, ``{"latency": "60%"}`` (of the original's
            measured latency, or milliseconds) or several of them (upper limits).
        dummy_input: an input for ``model`` (counts FLOPs and is what latency is timed on; its batch size
            scales absolute FLOP and latency limits).
        config: the search config (``score_func`` is required; see :class:`~modeopt_fastnas.BinarySearcher`).
        mode_config: the ``fastnas`` mode config (rules per module type); default: the FastNAS defaults.

    Returns:
        ``(model, results)``: the model at the chosen subnet (still a search space: export it with
        ``modeopt_core.export(model)``) and the search results (sensitivity map, subnet, FLOPs/params
        before and after, evaluations, timings; with a latency limit, predicted and measured latency).

    The search config and constraints are validated before the model is converted. If the search
    fails afterwards (e.g. an unreachable budget) the model stays converted at its original subnet,
    which computes the same function as before.
    """
    from .searcher import BinarySearcher

    Constraints.parse(constraints)
    BinarySearcher().sanitize_search_config(config)
    if not (applied_modes(model)[-1:] == ["fastnas"] and has_search_space(model)):
        model = apply_mode(model, [("fastnas", dict(mode_config or {}))])
    return search(model, constraints, dummy_input, dict(config or {}))
