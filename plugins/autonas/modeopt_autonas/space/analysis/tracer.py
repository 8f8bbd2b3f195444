"""A robust torch.fx tracer: untraceable submodules become opaque leaves instead of errors.

Tracing never touches the model: constant tensors that ``torch.fx`` would normally store on the
root module as ``_tensor_constant*`` attributes are kept in :attr:`TracedGraph.constants` instead.
When tracing fails inside a submodule, that submodule is made a leaf and the trace restarts;
a root that cannot be traced at all is replaced by separate traces of its children.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .ops import TRACED_THROUGH
from .value_tracer import Example, ValueTracer, bind_example, capture_inputs, preserved_state, unwrapped

__all__ = ["ModuleCall", "TraceResult", "TracedGraph", "trace_model"]

_log = logging.getLogger(__name__)

LeafPredicate = Callable[[nn.Module, str], bool]


@dataclass
class ModuleCall:
    """One invocation of a module during tracing (leaf or traced through)."""

    name: str  # qualified name in the analysed model
    input: fx.Node | None  # node of the first positional argument
    output: fx.Node | None  # node of the returned value (None when not a single proxy)
    leaf: bool


@dataclass
class TracedGraph:
    """The fx graph of one traced (sub)module of the analysed model."""

    graph: fx.Graph
    root: nn.Module
    scope: str  # qualified name of ``root`` in the analysed model ("" for the model itself)
    calls: list[ModuleCall] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    concrete: dict[str, Any] = field(default_factory=dict)

    def qualify(self, target: str) -> str:
        """The qualified name in the analysed model of a graph-relative module/attribute path."""
        if not self.scope:
            return target
        return f"{self.scope}.{target}" if target else self.scope


@dataclass
class TraceResult:
    graphs: list[TracedGraph]
    failed: dict[str, str]  # qualified module name -> first line of the tracing error


def _error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _concrete_args(module: nn.Module) -> dict[str, Any]:
    """Non-tensor defaults of ``forward``'s extra parameters, so ``if flag:`` branches trace."""
    try:
        params = list(inspect.signature(type(module).forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    concrete: dict[str, Any] = {}
    for p in params[2:]:  # skip ``self`` and the input
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty or isinstance(p.default, torch.Tensor):
            continue
        concrete[p.name] = p.default
    return concrete


class _ChannelTracer(fx.Tracer):
    def __init__(self, is_leaf: LeafPredicate, failed: dict[str, str], scope: str) -> None:
        super().__init__()
        self._is_leaf = is_leaf
        self._failed = failed
        self._scope = scope
        self.calls: list[ModuleCall] = []
        self.constants: dict[str, torch.Tensor] = {}
        self.failure: tuple[str, BaseException] | None = None
        self._buffers: dict[int, str] | None = None
        self._params: dict[int, str] | None = None
        self.inputs: dict[str, Any] = {}
        self._eager = 0

    def _buffer_names(self) -> dict[int, str]:
        """id -> name of the root's buffers (computed once: a scan per tensor argument is quadratic)."""
        if self._buffers is None:
            self._buffers = {id(b): name for name, b in self.root.named_buffers()}
        return self._buffers

    def _param_names(self) -> dict[int, str]:
        """id -> name of the root's parameters (fx scans ``named_parameters()`` per access: quadratic)."""
        if self._params is None:
            self._params = {}
            for name, p in self.root.named_parameters():
                self._params.setdefault(id(p), name)
        return self._params

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if isinstance(attr_val, nn.Parameter):
            name = self._param_names().get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _qualify(self, name: str) -> str:
        if not self._scope:
            return name
        return f"{self._scope}.{name}" if name else self._scope

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        qualified = self._qualify(module_qualified_name)
        return (
            qualified in self._failed or self._is_leaf(m, qualified) or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._eager:
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        leaf = self.is_leaf_module(m, name)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if self.failure is None and not leaf:
                self.failure = (self._qualify(name), exc)  # innermost traced module owns the failure
            raise
        first = args[0] if args else next(iter(kwargs.values()), None)
        self.calls.append(
            ModuleCall(
                self._qualify(name),
                first.node if isinstance(first, fx.Proxy) else None,
                out.node if isinstance(out, fx.Proxy) else None,
                leaf,
            )
        )
        return out

    def create_arg(self, a: Any) -> Any:
        # Parameters and buffers by a cached id lookup (fx scans all of the root's per argument).
        if isinstance(a, torch.Tensor):
            name = (self._param_names() if isinstance(a, nn.Parameter) else self._buffer_names()).get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        # fx would setattr a non-parameter constant tensor onto the root; keep it here instead.
        if isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter) and a not in self.tensor_attrs:
            if id(a) not in self._buffer_names():
                name = f"_modeopt_constant_{len(self.constants)}"
                self.tensor_attrs[a] = name
                self.constants[name] = a
        return super().create_arg(a)


def _leaf_graph(module: nn.Module, scope: str) -> TracedGraph:
    """A one-node graph for a root that is itself a leaf (e.g. the model is a single conv)."""
    graph = fx.Graph()
    x = graph.placeholder("input")
    y = graph.call_module("", (x,))
    graph.output(y)
    return TracedGraph(graph, module, scope, [ModuleCall(scope, x, y, True)])


class _ValueChannelTracer(ValueTracer, _ChannelTracer):
    """The channel tracer with value-carrying proxies (``value_tracer``)."""


def _trace_one(
    module: nn.Module, scope: str, is_leaf: LeafPredicate, failed: dict[str, str], example: Example | None = None
) -> TracedGraph | None:
    """Trace ``module``, making failing submodules leaves; None when ``module`` itself fails."""
    if is_leaf(module, scope):
        return _leaf_graph(module, scope)
    inputs: dict[str, Any] = {}
    if example is not None:
        inputs, concrete = bind_example(module, example)
    else:
        concrete = _concrete_args(module)
    while True:
        tracer = _ValueChannelTracer(is_leaf, failed, scope) if example is not None else _ChannelTracer(
            is_leaf, failed, scope
        )
        tracer.inputs = inputs
        try:
            with preserved_state(module) if example is not None else contextlib.nullcontext(), (
                unwrapped(TRACED_THROUGH) if example is not None else contextlib.nullcontext()
            ):
                graph = tracer.trace(module, concrete_args=concrete or None)
        except Exception as exc:
            owner, error = tracer.failure if tracer.failure else (scope, exc)
            if owner in failed or owner == scope:
                failed.setdefault(scope, _error_text(error))
                _log.info("cannot trace %s: %s", scope or "the model", _error_text(error))
                return None
            failed[owner] = _error_text(error)
            _log.info("tracing %s failed (%s); treating it as opaque", owner, failed[owner])
            continue
        root_call = ModuleCall(scope, None, None, False)
        placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.target not in concrete]
        outputs = [n for n in graph.nodes if n.op == "output"]
        if placeholders:
            root_call.input = placeholders[0]
        if outputs and isinstance(outputs[0].args[0], fx.Node):
            root_call.output = outputs[0].args[0]
        return TracedGraph(graph, module, scope, [*tracer.calls, root_call], tracer.constants, concrete)


def trace_model(model: nn.Module, is_leaf: LeafPredicate, example: Example | None = None) -> TraceResult:
    """Trace ``model``; untraceable submodules are analysed through separate traces of their children.

    Args:
        example: ``(args, kwargs)`` of a call of ``model``: trace with values (``value_tracer``), so shape-
            dependent Python and decorated forwards trace, and nodes carry shapes. Children traced on
            their own get the arguments they receive in a real forward on the example.
    """
    failed: dict[str, str] = {}
    graphs: list[TracedGraph] = []
    queue: list[tuple[str, nn.Module]] = [("", model)]
    examples: dict[str, Example] = {"": example} if example is not None else {}
    expanded: set[str] = set()
    while queue:
        if example is not None:
            missing = {scope for scope, _ in queue if scope not in examples}
            if missing:
                examples.update(capture_inputs(model, example, missing))
        scope, module = queue.pop(0)
        known_failures = set(failed)
        if example is not None and scope not in examples:
            failed.setdefault(scope, "never called when the model runs on the example input")
            continue
        traced = _trace_one(module, scope, is_leaf, failed, examples.get(scope))
        if traced is not None:
            graphs.append(traced)
        for name in sorted(set(failed) - known_failures):
            if name in expanded:
                continue
            expanded.add(name)
            owner = model.get_submodule(name) if name else model
            queue.extend(_children_to_trace(owner, name, is_leaf))
    return TraceResult(graphs, failed)


def _children_to_trace(owner: nn.Module, name: str, is_leaf: LeafPredicate) -> list[tuple[str, nn.Module]]:
    """The children of an untraceable module to trace on their own; containers that are not called
    themselves (``ModuleList``, ``ModuleDict``) are looked through."""
    out: list[tuple[str, nn.Module]] = []
    for child_name, child in owner.named_children():
        qualified = f"{name}.{child_name}" if name else child_name
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            out.extend(_children_to_trace(child, qualified, is_leaf))
        elif not is_leaf(child, qualified) and not fx.Tracer().is_leaf_module(child, qualified):
            out.append((qualified, child))
    return out
