"""Elastic depth: which trailing children of an ``nn.Sequential`` can be dropped.

A child is skippable when it is a shape-preserving residual block: walking back from its output
through element-wise ops reaches an add one of whose operands leads (again through element-wise
ops only) to the block's own input, so ``output = input (+ ...)`` has the input's shape, and its
input and output channels are the same group. Conservative conditions (all from the trace, no
re-tracing, no model changes):

* the Sequential uses ``nn.Sequential.forward`` (dropping children means running fewer of them)
  and is called exactly once in the traced graphs, as is each child;
* the child was traced through (not a leaf, not untraceable) and none of its parameters or
  submodules' parameters is read from outside the child (code that reaches into ``seq[i]``);
* only the trailing run of skippable children is reported (depth ``d`` keeps children ``0..d-1``).
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

from ..structure import DepthSpec
from .ops import ADD_FUNCTIONS, ADD_METHODS, ELEMENTWISE_METHODS, elementwise_modules, is_elementwise_function
from .ops import module_class_in as _module_class_in
from .tracer import ModuleCall, TracedGraph
from .value_tracer import SHAPE_KEY

__all__ = ["find_depth"]


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ADD_METHODS
    )


def _is_elementwise(node: fx.Node, traced: TracedGraph) -> bool:
    if node.op == "call_function":
        return is_elementwise_function(node.target)
    if node.op == "call_method":
        return node.target in ELEMENTWISE_METHODS
    if node.op == "call_module":
        try:
            module = traced.root.get_submodule(str(node.target))
        except AttributeError:
            return False
        return _module_class_in(module, elementwise_modules())
    return False


def _is_residual(call: ModuleCall, traced: TracedGraph) -> bool:
    """``call.output`` is ``call.input`` plus something, through element-wise ops only."""
    if call.input is None or call.output is None:
        return False
    stack: list[tuple[fx.Node, bool]] = [(call.output, False)]
    seen: set[tuple[fx.Node, bool]] = set()
    while stack:
        node, after_add = stack.pop()
        if (node, after_add) in seen:
            continue
        seen.add((node, after_add))
        if node is call.input:
            if after_add:
                return True
            continue
        if _is_add(node):
            stack.extend((a, True) for a in node.args[:2] if isinstance(a, fx.Node))
        elif _is_elementwise(node, traced) and node.args and isinstance(node.args[0], fx.Node):
            stack.append((node.args[0], after_add))
    return False


def _reached_from_outside(traced: TracedGraph) -> set[str]:
    """Modules whose attributes (or their submodules' attributes) are read from code outside of them."""
    out: set[str] = set()
    for node in traced.graph.nodes:
        if node.op != "get_attr" or str(node.target) in traced.constants:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        scopes = {traced.qualify(v[0]) for v in stack.values()} | {traced.scope}
        parts = traced.qualify(str(node.target)).split(".")[:-1]
        for i in range(1, len(parts) + 1):
            owner = ".".join(parts[:i])
            if owner not in scopes:
                out.add(owner)
    return out


def _shape_preserving(call: ModuleCall) -> bool:
    """With a trace on values: the block returns a tensor of its input's shape."""
    if call.input is None or call.output is None:
        return False
    a, b = call.input.meta.get(SHAPE_KEY), call.output.meta.get(SHAPE_KEY)
    return isinstance(a, tuple) and a == b


def _block_list(
    name: str, container: nn.Module, counts: Counter[str], calls: dict[str, tuple[ModuleCall, TracedGraph]],
    opaque: set[str], outside: set[str],
) -> DepthSpec | None:
    """A list of identical blocks each of which may be dropped: same class, each called once, traced
    through, not reached into from outside, and residual (or shape-preserving on the example)."""
    children = list(container.named_children())
    if len(children) < 2 or len({type(c) for _, c in children}) != 1:
        return None
    for key, _ in children:
        child = f"{name}.{key}" if name else key
        if counts[child] != 1 or child in opaque or child in outside:
            return None
        call, traced = calls[child]
        if call.leaf or not (_is_residual(call, traced) or _shape_preserving(call)):
            return None
    return DepthSpec(name, tuple(range(len(children))), blocks=True)


def find_depth(model: nn.Module, graphs: list[TracedGraph], opaque: set[str]) -> list[DepthSpec]:
    """Depth specs for every block list (a ModuleList or Sequential of identical droppable blocks) and every
    Sequential with a trailing run of skippable residual children."""
    counts: Counter[str] = Counter()
    calls: dict[str, tuple[ModuleCall, TracedGraph]] = {}
    outside: set[str] = set()
    for traced in graphs:
        outside |= _reached_from_outside(traced)
        for call in traced.calls:
            counts[call.name] += 1
            calls[call.name] = (call, traced)
    specs: list[DepthSpec] = []
    for name, seq in model.named_modules():
        is_list = type(seq) is nn.ModuleList
        plain_sequential = isinstance(seq, nn.Sequential) and type(seq).forward is nn.Sequential.forward
        if (is_list or plain_sequential) and name not in opaque:
            blocks = _block_list(name, seq, counts, calls, opaque, outside)
            if blocks is not None:
                specs.append(blocks)
                continue
        if not plain_sequential:
            continue
        if counts[name] != 1 or name in opaque or calls[name][0].leaf:
            continue
        skippable: list[int] = []
        children = list(seq.named_children())
        for index in range(len(children) - 1, -1, -1):
            child = f"{name}.{children[index][0]}" if name else children[index][0]
            if counts[child] != 1 or child in opaque:
                break
            call, traced = calls[child]
            if call.leaf or child in outside:
                break
            if not _is_residual(call, traced):
                break
            skippable.append(index)
        if skippable:
            specs.append(DepthSpec(name, tuple(sorted(skippable))))
    return specs
