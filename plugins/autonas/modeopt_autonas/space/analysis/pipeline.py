"""The tied-channel analysis entry point: trace, propagate, collect the structure and a report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from modeopt_core.sdk import unpack_dummy_input

from ..dynamic.thirdparty import register_loaded
from ..errors import SearchSpaceError
from ..layers import LAYERS, LayerRegistry
from ..structure import FrozenItem, SpaceStructure
from .depth import find_depth
from .groups import frozen_items
from .ops import is_known_leaf
from .propagate import Context, propagate
from .report import AnalysisReport, build_report
from .tracer import trace_model

__all__ = ["AnalysisInputError", "AnalysisResult", "analyze"]

_log = logging.getLogger(__name__)


class AnalysisInputError(SearchSpaceError, TypeError):
    """``analyze`` was called with something that is not a model or not a list of globs."""


@dataclass
class AnalysisResult:
    """The search-space structure (data for the builder) and a readable report of it."""

    structure: SpaceStructure
    report: AnalysisReport


def _globs(value: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise AnalysisInputError(
            f"{what} must be a list of fnmatch globs over module names, e.g. [{value!r}]; got {value!r}"
        )
    return tuple(value)


def analyze(
    model: nn.Module,
    *,
    layers: LayerRegistry = LAYERS,
    leaf_modules: Sequence[str] = (),
    frozen_modules: Sequence[str] = (),
    example: Any = None,
) -> AnalysisResult:
    """Find the channel dims of ``model`` that must shrink together, without changing it.

    Args:
        layers: which module types have channels the search space can change.
        leaf_modules: globs of module names not to trace into; channels flowing into or out of
            them are frozen. A glob naming a container covers everything inside it.
        frozen_modules: globs of module names whose widths must not change.
        example: an input of ``model`` in the dummy-input convention (a tensor, a tuple of positional
            arguments, optionally ending with a dict of keyword arguments). With it the model is traced
            on that input (one real forward; buffers and random state are put back): shape-dependent
            Python and decorated forwards trace, and shape-aware rules apply (attention heads, token
            reshapes). Without it, ``torch.fx`` traces symbolically (no forward pass) where it can.
    """
    if not isinstance(model, nn.Module):
        raise AnalysisInputError(f"analyze() needs a torch.nn.Module, got {type(model).__name__}")
    register_loaded()
    ctx = Context(layers, _globs(leaf_modules, "leaf_modules"), _globs(frozen_modules, "frozen_modules"), {})

    def is_leaf(module: nn.Module, name: str) -> bool:
        return (
            layers.lookup_class(type(module)) is not None
            or is_known_leaf(module)
            or ctx.glob_match(name, ctx.leaf_globs) is not None
        )

    call = None if example is None else unpack_dummy_input(example)
    traced = trace_model(model, is_leaf, call)
    ctx.failed.update(traced.failed)
    for graph in traced.graphs:
        propagate(ctx, graph)

    bound = {module for module, _ in ctx.table.bindings}
    for name, why in ctx.functional.items():
        for (module, _), raw in ctx.table.bindings.items():
            if module == name:
                for gid, _ in raw.segments:
                    ctx.table.freeze(gid, f"{name}: {why}")

    groups, bindings, reasons = ctx.table.finalize()
    frozen = frozen_items(groups, bindings)
    frozen += [
        FrozenItem(name, f"untraceable module {name or '(model)'}: {err}") for name, err in traced.failed.items()
    ]
    for name, module in model.named_modules():
        if layers.lookup_class(type(module)) is None or name in bound:
            continue
        frozen.append(FrozenItem(name, _unbound_reason(name, ctx)))
    depth = find_depth(model, traced.graphs, set(ctx.opaque) | set(traced.failed))
    structure = SpaceStructure(groups=groups, bindings=bindings, depth=depth, frozen=frozen)
    report = build_report(structure, reasons, traced.failed)
    for glob in (*ctx.leaf_globs, *ctx.frozen_globs):
        if not any(ctx.glob_match(name, (glob,)) for name, _ in model.named_modules()):
            _log.warning("glob %r matches no module of the model", glob)
    _log.info("tied-channel analysis: %s", report.summary())
    return AnalysisResult(structure, report)


def _unbound_reason(name: str, ctx: Context) -> str:
    """Why a registered layer got no binding."""
    if name in ctx.functional:
        return f"not searchable: {ctx.functional[name]}"
    if name in ctx.opaque:
        return f"not searchable: treated as {ctx.opaque[name]}"
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        ancestor = ".".join(parts[:i])
        if ancestor in ctx.failed:
            return f"not searchable: inside untraceable module {ancestor or '(model)'}"
        if ancestor in ctx.opaque:
            return f"not searchable: inside {ctx.opaque[ancestor]}"
    return "not searchable: never called in the traced forward (a branch not taken, or used functionally)"
