"""Tracing on an example input: proxies that carry the values their nodes compute.

Plain ``torch.fx`` proxies have no values, so ``*x.shape`` unpacking, ``if x.size(1) == ...`` and
``len(x)`` stop the trace; most Hugging Face forwards do all three (and are wrapped in
``(*args, **kwargs)`` decorators fx cannot patch). Here every proxy also holds the value its node
computes on an example input, so Python control flow and shape arithmetic follow the example (the
graph is specialised to the branches it takes, like ``torch.export``), and every tensor node records
its shape in ``node.meta[SHAPE_KEY]`` for the shape-aware propagation rules.

The model is run for real once; its buffers (batch-norm statistics updated by a train-mode forward)
and the global random state are put back afterwards, so tracing changes nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace
from torch.fx._symbolic_trace import _orig_module_call

__all__ = ["SHAPE_KEY", "Example", "ValueTracer", "bind_example", "capture_inputs", "preserved_state", "unwrapped"]

SHAPE_KEY = "modeopt_shape"
#: positional and keyword arguments of one call
Example = tuple[tuple[Any, ...], dict[str, Any]]

_META = frozenset({"dtype", "device", "ndim", "layout", "requires_grad", "is_cuda", "is_sparse", "is_quantized",
                   "is_meta", "is_floating_point"})


def _value_of(a: Any) -> Any:
    return fx.node.map_aggregate(a, lambda x: x.value if isinstance(x, fx.Proxy) else x)


class _ValueProxy(fx.Proxy):
    """An fx proxy that also holds the value its node computes on the example input."""

    value: Any

    def __getattr__(self, k: str) -> Any:
        if k in ("value", "_node") or k.startswith("__"):
            raise AttributeError(k)
        if k in _META:  # never width-dependent: give the concrete answer
            return getattr(self.value, k)
        return _ValueAttribute(self, k)

    def __len__(self) -> int:
        return len(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return operator.index(self.value)

    def __float__(self) -> float:
        return float(self.value)


class _ValueAttribute(fx.proxy.Attribute, _ValueProxy):
    def __init__(self, root: _ValueProxy, attr: str) -> None:
        fx.proxy.Attribute.__init__(self, root, attr)
        self.value = getattr(root.value, attr)


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [tuple(v.shape) for v in value]
    return None


class ValueTracer:
    """Mixin for :class:`~.tracer._ChannelTracer`: the value-carrying behaviour (see module doc).

    ``inputs`` maps the root forward's parameter names to their example values.
    """

    root: nn.Module
    inputs: dict[str, Any]
    _eager: int

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)  # type: ignore[arg-type]

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._eager += 1
        try:
            return fn(*args, **kwargs)
        finally:
            self._eager -= 1

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        # decorated forwards ((*args, **kwargs) wrappers): trace the function they wrap
        return super().create_args_for_root(inspect.unwrap(root_fn), is_module, concrete_args)  # type: ignore[misc]

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)  # type: ignore[misc]
        if kind == "placeholder":
            key = str(target).lstrip("*")
            if key not in self.inputs:  # fx names the placeholder of a concrete argument "<name>_1"
                key = key.rsplit("_", 1)[0]
            value: Any = self.inputs.get(key, {} if str(target).startswith("**") else None)
        elif kind == "get_attr":
            value = self._run(_fetch, self.root, str(target))
        elif kind in ("call_function", "call_method", "call_module"):
            a, k = _value_of(args), _value_of(kwargs)
            if kind == "call_function":
                value = self._run(target, *a, **k)
            elif kind == "call_method":
                value = self._run(lambda: getattr(a[0], target)(*a[1:], **k))
            else:
                value = self._run(_orig_module_call, self.root.get_submodule(target), *a, **k)
        else:
            value = None
        proxy.value = value
        shape = _shape(value)
        if shape is not None:
            proxy.node.meta[SHAPE_KEY] = shape
        return proxy

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._eager:  # computing a value: run for real
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)  # type: ignore[misc]

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._eager:
            return attr_val
        if isinstance(attr_val, torch.Tensor) and not isinstance(attr_val, nn.Parameter):
            # buffers become graph values too (fx proxies only parameters), so that indexing a buffer
            # with a traced size (``self.position_ids[:, :n]``) is a graph op, not a tensor method fed a proxy
            name = self._buffer_names().get(id(attr_val))  # type: ignore[attr-defined]
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)  # type: ignore[misc]

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(getattr(obj, "value", None))

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        value: Any = getattr(obj, "value", None)
        proxy: Any = obj
        return iter(value) if isinstance(value, dict) else iter([proxy[i] for i in range(len(value))])

    def keys(self, obj: fx.Proxy) -> Any:
        return getattr(obj, "value", {}).keys()


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def bind_example(module: nn.Module, example: Example) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs, concrete)``: the example's values by parameter name of ``module``'s (unwrapped) forward,
    and concrete values for every other parameter (its default; ``use_cache`` pinned to False, so that a
    trace builds no cache object; ``**kwargs`` empty)."""
    args, kwargs = example
    signature = inspect.signature(inspect.unwrap(type(module).forward))
    params = list(signature.parameters.values())[1:]
    inputs: dict[str, Any] = {}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for p, value in zip(positional, args):
        inputs[p.name] = value
    inputs.update({k: v for k, v in kwargs.items() if k in signature.parameters})
    concrete: dict[str, Any] = {}
    for p in params:
        if p.name in inputs or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            continue
        concrete[p.name] = False if p.name == "use_cache" else (None if p.default is p.empty else p.default)
    inputs.update(concrete)
    return inputs, concrete


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Put back every buffer of ``model`` and the global random state after the block (a traced train-mode
    forward updates batch-norm statistics; dropout draws random numbers)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for buf, saved in buffers:
                if buf.shape == saved.shape:
                    buf.copy_(saved)
        torch.set_rng_state(rng)


def capture_inputs(model: nn.Module, example: Example, names: set[str]) -> dict[str, Example]:
    """The arguments the modules ``names`` receive at their first call when ``model`` runs on ``example``
    (cloned, so that in-place ops later in the forward cannot change them)."""
    modules = dict(model.named_modules())
    seen: dict[str, Example] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
            if name not in seen:
                clone = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
                seen[name] = (tuple(fx.node.map_aggregate(a, clone) for a in args),
                              {k: fx.node.map_aggregate(v, clone) for k, v in kwargs.items()})

        return record

    for name in names:
        if name in modules:
            handles.append(modules[name].register_forward_pre_hook(hook(name), with_kwargs=True))
    try:
        with preserved_state(model):
            model(*example[0], **example[1])
    finally:
        for h in handles:
            h.remove()
    return seen


@contextlib.contextmanager
def unwrapped(functions: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Let traces in the block go inside the ``torch.fx``-wrapped functions ``(module, name)`` (of modules
    already loaded), which are otherwise recorded as one opaque call."""
    table: dict[Any, Any] = getattr(_symbolic_trace, "_wrapped_fns_to_patch", {})
    removed = {}
    for module_name, name in functions:
        module = sys.modules.get(module_name)
        key = (id(module.__dict__), name) if module is not None else None
        if key is not None and key in table:
            removed[key] = table.pop(key)
    try:
        yield
    finally:
        table.update(removed)
