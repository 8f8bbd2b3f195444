"""Search constraints (``flops``, ``params``, ``latency``): parsing, counting and checking.

A constraint limit is an absolute number (``3e6``; ``latency`` in milliseconds) or a percentage of
the original model's value
(``"60%"``, ``"60 %"`` and ``"12.5%"`` are accepted). Percentages above 100% are allowed; they are
satisfied by the original model itself, so they only make sense when the search space holds models
larger than the original. Zero, negative, non-finite and boolean limits are rejected.

Counting goes through a :class:`ModelProfiler`. The default, :class:`ForwardProfiler`, runs the
model once on the dummy input under :class:`torch.utils.flop_counter.FlopCounterMode`:

* ``flops`` are the counter's total for that input (2 x multiply-accumulates of matmuls, convolutions
  and attention; batch norm, activations, pooling and element-wise ops count as zero), so they scale
  with the dummy input's batch size.
* ``params`` are the elements of the parameters whose storage is read during that forward: modules
  that do not run (an unselected branch) do not count, tied weights count once, a sliced weight
  counts in full. Parameters on the ``meta`` device cannot be told apart, so all of them count.
* ``latency`` is the median wall-clock time in milliseconds of ``latency_runs`` forward passes on the
  dummy input after a warm-up (eval mode, ``torch.inference_mode``, current thread count; see
  :mod:`modeopt_core.latency`). A real measurement: use it for few candidates, or a latency model.

Plugins with a cheaper way to count (e.g. an analytic count over a search space) provide their own
profiler object with the same methods (e.g. the NAS search space's analytic counts and its
latency table, ``modeopt_autonas.space.LatencyModel``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ConstraintError

__all__ = [
    "CONSTRAINT_NAMES",
    "ConstraintResult",
    "Constraints",
    "ForwardProfiler",
    "ModelProfiler",
    "run_with_dummy_input",
    "unpack_dummy_input",
]

CONSTRAINT_NAMES: tuple[str, ...] = ("flops", "params", "latency")
"""The constraint keys understood by :class:`Constraints`, in reporting order."""

_PERCENT_RE = re.compile(r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*%\s*$")


def unpack_dummy_input(dummy_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split a dummy input into ``(args, kwargs)`` for ``model(*args, **kwargs)``.

    A non-tuple object is the single positional argument; a tuple holds the positional arguments;
    a tuple whose last item is a dict passes that dict as keyword arguments (append ``{}`` to pass a
    dict positionally).
    """
    if not isinstance(dummy_input, tuple):
        return (dummy_input,), {}
    if dummy_input and isinstance(dummy_input[-1], dict):
        kwargs = dummy_input[-1]
        if not all(isinstance(k, str) for k in kwargs):
            raise ConstraintError(
                "the dict at the end of a dummy_input tuple is used as keyword arguments, so its keys must "
                "be str; append {} to the tuple to pass a dict positionally"
            )
        return tuple(dummy_input[:-1]), dict(kwargs)
    return tuple(dummy_input), {}


def run_with_dummy_input(model: nn.Module, dummy_input: Any) -> Any:
    """Call ``model`` on ``dummy_input`` following :func:`unpack_dummy_input`'s convention."""
    args, kwargs = unpack_dummy_input(dummy_input)
    return model(*args, **kwargs)


@runtime_checkable
class ModelProfiler(Protocol):
    """Counts the cost of a model in its current state (e.g. the currently selected subnet).

    A profiler that supports the ``latency`` constraint also has ``latency() -> float`` (milliseconds).
    Optionally a profiler may also offer ``measure(names) -> dict[str, float]`` to count several
    quantities at once; :meth:`Constraints.check` uses it when present.
    """

    def flops(self) -> float:
        """Floating-point operations of one forward pass."""
        ...

    def params(self) -> float:
        """Number of parameter elements the current model uses."""
        ...


class _StorageRecorder(TorchDispatchMode):
    """Records the storages of every tensor an aten op reads (to find the parameters in use)."""

    def __init__(self) -> None:
        super().__init__()
        self.storage_ptrs: set[int] = set()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        for value in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.storage_ptrs.add(value.untyped_storage().data_ptr())
        return func(*args, **kwargs)


class ForwardProfiler:
    """Counts FLOPs and used parameters by running ``model`` on ``dummy_input`` (see module doc).

    The model runs in eval mode under ``torch.no_grad``; every module's training flag is restored.
    ``latency_runs`` and ``timer`` (a :class:`~modeopt_core.latency.LatencyTimer`) set how ``latency``
    is timed.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, *, latency_runs: int = 20, timer: Any = None) -> None:
        if dummy_input is None:
            raise ConstraintError(
                "counting flops/params needs a dummy_input to run the model on; pass one (a tensor, or a "
                "tuple of positional args optionally ending with a dict of kwargs)"
            )
        unpack_dummy_input(dummy_input)  # validate the convention early
        self.model = model
        self.dummy_input = dummy_input
        self.latency_runs = latency_runs
        self.timer = timer

    def flops(self) -> float:
        """FLOPs of one forward pass on the dummy input."""
        return self.measure(("flops",))["flops"]

    def params(self) -> float:
        """Elements of the parameters read during one forward pass on the dummy input."""
        return self.measure(("params",))["params"]

    def latency(self) -> float:
        """Median milliseconds of ``latency_runs`` forward passes on the dummy input (after 3 warm-ups)."""
        from .latency import measure_latency  # the latency module builds on this one

        return measure_latency(self.model, self.dummy_input, runs=self.latency_runs, warmup=3,
                               timer=self.timer).median_ms

    def measure(self, names: Collection[str]) -> dict[str, float]:
        """Count the requested quantities (``flops``/``params`` in one forward pass; ``latency`` timed)."""
        unknown = set(names) - set(CONSTRAINT_NAMES)
        if unknown:
            raise ConstraintError(f"cannot measure {sorted(unknown)}; known: {list(CONSTRAINT_NAMES)}")
        values: dict[str, float] = {}
        if "latency" in names:
            values["latency"] = self.latency()
        if not {"flops", "params"} & set(names):
            return values
        flags = {m: m.training for m in self.model.modules()}
        from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it costs ~0.1-0.3 s (triton)

        counter = FlopCounterMode(display=False)
        recorder = _StorageRecorder()
        try:
            self.model.eval()
            with torch.no_grad(), counter, recorder:
                run_with_dummy_input(self.model, self.dummy_input)
        finally:
            for module, flag in flags.items():
                module.training = flag
        if "flops" in names:
            values["flops"] = int(counter.get_total_flops())
        if "params" in names:
            values["params"] = self._used_params(recorder.storage_ptrs)
        return values

    def _used_params(self, storage_ptrs: set[int]) -> int:
        total = 0
        for param in self.model.parameters():  # deduplicates tied parameters
            if param.device.type == "meta" or param.untyped_storage().data_ptr() in storage_ptrs:
                total += param.numel()
        return total


@dataclass(frozen=True)
class ConstraintResult:
    """Outcome of :meth:`Constraints.check`: measured values, absolute limits and value/limit ratios."""

    satisfied: bool
    values: dict[str, float]
    limits: dict[str, float]
    ratios: dict[str, float]

    @property
    def violated(self) -> list[str]:
        """Names of the constraints whose value exceeds its limit."""
        return [name for name, value in self.values.items() if value > self.limits[name]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (used in search history and checkpoints)."""
        return {
            "satisfied": self.satisfied,
            "values": dict(self.values),
            "limits": dict(self.limits),
            "ratios": dict(self.ratios),
        }


@dataclass(frozen=True)
class _Limit:
    value: float  # absolute count, or percent when relative
    relative: bool

    def spec(self) -> float | str:
        return f"{self.value:g}%" if self.relative else self.value


def _parse_limit(name: str, raw: Any) -> _Limit:
    example = "latency=12.5 (milliseconds)" if name == "latency" else f"{name}=2.5e6"
    fix = f'use a positive number (e.g. {example}) or a percentage of the original model (e.g. "60%")'
    if isinstance(raw, str):
        match = _PERCENT_RE.match(raw)
        if match is None:
            raise ConstraintError(f"constraint {name}={raw!r} is not understood; {fix}")
        percent = float(match.group("num"))
        if not math.isfinite(percent) or percent <= 0:
            raise ConstraintError(f"constraint {name}={raw!r} must be a percentage above 0%; {fix}")
        return _Limit(percent, relative=True)
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise ConstraintError(f"constraint {name}={raw!r} has type {type(raw).__name__}; {fix}")
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ConstraintError(f"constraint {name}={raw!r} must be finite and above 0; {fix}")
    return _Limit(int(raw) if isinstance(raw, numbers.Integral) else value, relative=False)


@dataclass(frozen=True)
class Constraints:
    """Upper limits on ``flops``, ``params`` and/or ``latency`` (milliseconds); build with :meth:`parse`.

    Percentage limits need the original model's values: :meth:`resolve` measures them once (with the
    model in its original state) and returns constraints with absolute limits.
    """

    _limits: dict[str, _Limit] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    """Original-model values the percentage limits refer to (filled by :meth:`resolve`)."""

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | Constraints | None) -> Constraints:
        """Parse ``{"flops": ..., "params": ..., "latency": ...}`` (any of the keys; ``{}``/None = unconstrained)."""
        if isinstance(spec, Constraints):
            return spec
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ConstraintError(
                f"constraints must be a dict like {{'flops': '60%'}}, got {type(spec).__name__}; "
                f"accepted keys: {list(CONSTRAINT_NAMES)}"
            )
        unknown = [k for k in spec if k not in CONSTRAINT_NAMES]
        if unknown:
            raise ConstraintError(f"unknown constraint(s) {unknown}; accepted keys: {list(CONSTRAINT_NAMES)}")
        return cls({name: _parse_limit(name, spec[name]) for name in CONSTRAINT_NAMES if name in spec})

    @property
    def names(self) -> list[str]:
        """Constrained quantities, in :data:`CONSTRAINT_NAMES` order."""
        return list(self._limits)

    @property
    def is_resolved(self) -> bool:
        """True when every percentage limit has its reference value."""
        return all(name in self.reference for name, lim in self._limits.items() if lim.relative)

    def resolve(self, profiler: ModelProfiler) -> Constraints:
        """Measure the reference values of the percentage limits on the profiler's current model."""
        todo = [name for name, lim in self._limits.items() if lim.relative and name not in self.reference]
        if not todo:
            return self
        measured = _measure(profiler, todo)
        return Constraints(dict(self._limits), {**self.reference, **measured})

    @property
    def limits(self) -> dict[str, float]:
        """Absolute upper limit of each constraint."""
        if not self.is_resolved:
            raise ConstraintError(
                "percentage constraints need the original model's values: call resolve(profiler) with the "
                "model in its original state first"
            )
        return {
            name: (self.reference[name] * lim.value / 100.0 if lim.relative else lim.value)
            for name, lim in self._limits.items()
        }

    def check(self, profiler: ModelProfiler) -> ConstraintResult:
        """Measure the model's current values and compare them with the limits (value <= limit)."""
        limits = self.limits
        values = _measure(profiler, list(limits)) if limits else {}
        ratios = {name: values[name] / limits[name] for name in limits}
        satisfied = all(values[name] <= limits[name] for name in limits)
        return ConstraintResult(satisfied, values, limits, ratios)

    def to_dict(self) -> dict[str, float | str]:
        """The normalised spec (``{"flops": "60%", "params": 1000000}``); ``parse`` accepts it back."""
        return {name: lim.spec() for name, lim in self._limits.items()}

    def __bool__(self) -> bool:
        return bool(self._limits)


def _measure(profiler: ModelProfiler, names: list[str]) -> dict[str, float]:
    measure = getattr(profiler, "measure", None)
    if callable(measure):
        values = dict(measure(names))
    else:
        values = {name: getattr(profiler, name)() for name in names}
    for name in names:
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConstraintError(
                f"profiler {type(profiler).__name__} returned {name}={value!r}; expected a finite number"
            )
    return {name: values[name] for name in names}
