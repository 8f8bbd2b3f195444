"""The distillation state that lives on a student between ``kd_loss`` and ``export_student``.

A :class:`Distiller` is kept in the student's ``__dict__`` (never as a submodule: the teacher's
weights stay out of the student's ``state_dict``, ``parameters()``, DDP and checkpoints). It
installs forward hooks on the student that keep the last forward's inputs and the outputs of the
paired modules; a plain forward therefore still returns the student's outputs unchanged.

The teacher runs lazily, inside :meth:`Distiller.compute`, on the inputs of the last student
forward: forwards without a loss (validation) cost no teacher compute, and an in-place teacher (the
student's own largest subnet) can run after the student's sampled subnet has done its forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from modeopt_core import ConvertError

from ._space import search_space_of
from .adapters import adapter_names, new_adapter, project
from .config import KDLossConfig, LayerPair
from .errors import DistillError, ShapeMismatchError, TeacherMissingError
from .losses import kd_term

__all__ = ["METHOD_NAME", "Distiller", "distiller_of", "unpack_input"]

_ATTR = "_modeopt_distiller"
#: the method added to a distilled student
METHOD_NAME = "compute_kd_loss"


# TODO(sdk): the same convention as the core's (non-public) constraints.unpack_dummy_input; use the
# core's helper once the plugin SDK exports it.
def unpack_input(dummy_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor is one positional argument; a tuple holds them; a trailing dict in a tuple is kwargs."""
    if not isinstance(dummy_input, tuple):
        return (dummy_input,), {}
    if dummy_input and isinstance(dummy_input[-1], dict):
        return tuple(dummy_input[:-1]), dict(dummy_input[-1])
    return tuple(dummy_input), {}


def distiller_of(model: nn.Module) -> Distiller | None:
    """The distillation state installed on ``model`` (already unwrapped), or None."""
    found = model.__dict__.get(_ATTR)
    return found if isinstance(found, Distiller) else None


class _Capture:
    """Forward hook that hands a module's output to its distiller (a class: deepcopy and removal find it)."""

    def __init__(self, distiller: Distiller, name: str) -> None:
        self.distiller, self.name = distiller, name

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.distiller._record(self.name, output)


class _InputCapture:
    """Forward pre-hook on the student root: a new forward starts, keep its inputs."""

    def __init__(self, distiller: Distiller) -> None:
        self.distiller = distiller

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.distiller._phase == "student":
            self.distiller._start(args, kwargs)


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    return [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]


@contextlib.contextmanager
def _flags(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Inside: every module in eval mode if asked; afterwards each module's own flag is put back."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            for m, _ in saved:
                m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _select(value: Any, item: str | int | None, where: str) -> torch.Tensor:
    """The tensor a pair compares: the output itself, or one item of a structured output."""
    if item is None:
        picked = value
    elif isinstance(item, int):
        if not isinstance(value, (tuple, list)) or not -len(value) <= item < len(value):
            raise ShapeMismatchError(f"{where}: output index {item} does not exist in a {type(value).__name__}")
        picked = value[item]
    elif isinstance(value, Mapping) and item in value:
        picked = value[item]
    elif hasattr(value, item) and not isinstance(value, torch.Tensor):
        picked = getattr(value, item)
    else:
        raise ShapeMismatchError(f"{where}: the output ({type(value).__name__}) has no item or attribute {item!r}")
    if not isinstance(picked, torch.Tensor):
        kind = "index" if isinstance(picked, (tuple, list)) else "key or attribute"
        raise ShapeMismatchError(
            f"{where}: the output is a {type(picked).__name__}, not a tensor; set 'output' (and 'teacher_output') "
            f"to the {kind} of the tensor to match"
        )
    return picked


class Distiller:
    """Hooks, teacher and adapters of one distilled student (see the module doc)."""

    def __init__(self, model: nn.Module, config: KDLossConfig, teacher: nn.Module | None,
                 teacher_info: dict[str, Any], adapters: Mapping[str, Mapping[str, int]]) -> None:
        self.model = model
        self.config = config
        self.teacher = teacher
        self.teacher_info = teacher_info
        #: pair index -> {"in", "out", "dim"}; the parameters themselves live on the model
        self.adapters = {k: dict(v) for k, v in adapters.items()}
        # "student": forwards are the student's; "teacher": an in-place teacher pass; "external": another teacher runs
        self._phase = "student"
        self._reset()

    def _reset(self) -> None:
        self._inputs: tuple[tuple[Any, ...], dict[str, Any], list[tuple[torch.Tensor, int]]] | None = None
        self._student: dict[str, Any] = {}
        self._student_calls: Counter[str] = Counter()
        self._teacher_out: dict[str, Any] = {}
        self._teacher_calls: Counter[str] = Counter()

    def __deepcopy__(self, memo: dict[int, Any]) -> Distiller:
        # A copied student shares the teacher (it is not part of the student) and starts with no captures.
        new = object.__new__(Distiller)
        memo[id(self)] = new
        new.model = copy.deepcopy(self.model, memo)
        new.config = self.config.model_copy(deep=True)
        new.teacher = self.teacher
        new.teacher_info = copy.deepcopy(self.teacher_info, memo)
        new.adapters = copy.deepcopy(self.adapters, memo)
        new._phase = "student"
        new._reset()
        return new

    # ---- which modules are watched ----------------------------------------------------------------
    @property
    def in_place(self) -> bool:
        """Whether the teacher is the student's own subnet (``teacher_subnet``)."""
        return self.config.teacher_subnet is not None

    def _watched(self) -> list[str]:
        names = {p.student for p in self.config.pairs}
        if self.in_place:
            names |= {p.teacher_name for p in self.config.pairs}
        return sorted(n for n in names if n)

    # ---- installing ---------------------------------------------------------------------------------
    def _hook_submodules(self) -> None:
        modules = dict(self.model.named_modules())
        for name in self._watched():
            modules[name].register_forward_hook(_Capture(self, name))

    def _unhook(self) -> None:
        for module in self.model.modules():
            for hooks in (module._forward_hooks, module._forward_pre_hooks):
                for key in [k for k, h in hooks.items() if isinstance(h, (_Capture, _InputCapture))
                            and h.distiller is self]:
                    del hooks[key]
                    module._forward_hooks_with_kwargs.pop(key, None)
                    module._forward_hooks_always_called.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)

    def install(self) -> None:
        """Hook the student, add the adapters' parameters and the ``compute_kd_loss`` method."""
        self._hook_submodules()
        self.model.register_forward_pre_hook(_InputCapture(self), with_kwargs=True)
        self.model.register_forward_hook(_Capture(self, ""))
        param = next(self.model.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (None, None)
        for key, size in sorted(self.adapters.items()):
            weight, bias = new_adapter(size["in"], size["out"], seed=int(key), device=device, dtype=dtype)
            for name, value in zip(adapter_names(key), (weight, bias)):
                if hasattr(self.model, name):
                    raise ConvertError(f"the student already has an attribute {name!r}; rename it")
                self.model.register_parameter(name, value)
        self.model.__dict__[_ATTR] = self
        self.model.__dict__[METHOD_NAME] = self.compute

    def uninstall(self) -> list[str]:
        """Remove everything :meth:`install` added; return the names of the dropped adapter parameters."""
        dropped = []
        for key in sorted(self.adapters):
            for name in adapter_names(key):
                if self.model._parameters.pop(name, None) is not None:
                    dropped.append(name)
        self._unhook()
        self.model.__dict__.pop(_ATTR, None)
        self.model.__dict__.pop(METHOD_NAME, None)
        self._reset()  # the teacher stays referenced here: a rolled-back export must find it again
        return dropped

    # ---- capturing ----------------------------------------------------------------------------------
    def _start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._reset()
        # inference-mode tensors keep no version counter (and cannot be trained on): nothing to check
        versions = [(t, t._version) for t in _tensors(args, kwargs) if not t.is_inference()]
        self._inputs = (args, kwargs, versions)

    def _record(self, name: str, output: Any) -> None:
        if self._phase == "student":
            self._student[name] = output
            self._student_calls[name] += 1
        elif self._phase == "teacher":
            self._teacher_out[name] = output
            self._teacher_calls[name] += 1

    # ---- the teacher ----------------------------------------------------------------------------------
    def _run_teacher(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        grad = torch.no_grad() if self.config.teacher_no_grad else contextlib.nullcontext()
        eval_mode = self.config.resolved_teacher_eval()
        self._teacher_out, self._teacher_calls = {}, Counter()
        if self.in_place:
            space = search_space_of(self.model, required=True)
            assert space is not None
            selected = space.config()
            self._phase = "teacher"
            try:
                with _flags(self.model, eval_mode), grad:
                    space.sample(self.config.teacher_subnet)
                    # forward(), not __call__: the root's hooks (supernet sampling, our capture) must not
                    # see the teacher pass; the submodules' capture hooks route into the teacher's outputs
                    out = self.model.forward(*args, **kwargs)
            finally:
                self._phase = "student"
                space.select(selected)
            self._teacher_out[""] = out
            self._teacher_calls[""] += 1
            return
        teacher = self.teacher
        if teacher is None:
            recorded = self.teacher_info.get("factory")
            how = (f"modeopt_distill.attach_teacher(model) rebuilds it from the recorded factory {recorded!r}"
                   if recorded else "pass it again: modeopt_distill.attach_teacher(model, teacher)")
            raise TeacherMissingError(f"this distilled model has no teacher (checkpoints never hold it); {how}")
        self._check_device(teacher, args, kwargs)
        modules = dict(teacher.named_modules())
        handles = []
        for name in sorted({p.teacher_name for p in self.config.pairs} - {""}):
            def hook(module: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                self._teacher_out[name] = output
                self._teacher_calls[name] += 1
            handles.append(modules[name].register_forward_hook(hook))
        self._phase = "external"  # a teacher sharing modules with the student must not overwrite its outputs
        try:
            with _flags(teacher, eval_mode), grad:
                out = teacher(*args, **kwargs)
        finally:
            self._phase = "student"
            for handle in handles:
                handle.remove()
        self._teacher_out[""] = out
        self._teacher_calls[""] += 1

    @staticmethod
    def _check_device(teacher: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        param = next(teacher.parameters(), None)
        given = _tensors(args, kwargs)
        if param is not None and given and param.device != given[0].device:
            raise DistillError(
                f"the teacher is on {param.device} but the student's input is on {given[0].device}; move the teacher "
                f"(teacher.to({str(given[0].device)!r})): it is not a submodule of the student, so student.to() "
                "does not move it"
            )

    # ---- the loss -------------------------------------------------------------------------------------
    def _value(self, pair: LayerPair, index: int, role: str) -> torch.Tensor:
        name = pair.student if role == "student" else pair.teacher_name
        outputs, calls = (self._student, self._student_calls) if role == "student" else (
            self._teacher_out, self._teacher_calls)
        where = f"pairs[{index}] ({pair.label()}), {role} module {name!r}"
        if name not in outputs:
            raise ShapeMismatchError(
                f"{where} did not run in the last forward (a supernet's subnet may skip it); pair a module "
                "that runs on every forward"
            )
        if calls[name] > 1:
            raise ShapeMismatchError(
                f"{where} ran {calls[name]} times in one forward, so its output is ambiguous; pair a module "
                "that runs once"
            )
        return _select(outputs[name], pair.output if role == "student" else pair.teacher_item, where)

    def _pair_tensors(self, index: int, pair: LayerPair) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._value(pair, index, "student"), self._value(pair, index, "teacher")
        adapter = self.adapters.get(str(index))
        if adapter is not None:
            weight, bias = (self.model._parameters[n] for n in adapter_names(str(index)))
            assert weight is not None and bias is not None
            s = project(s, weight, bias, adapter["dim"])
        if s.shape != t.shape:
            fix = ("the adapter's output must have the teacher's shape apart from dim"
                   if adapter is not None else "pair layers of equal shape, or set adapter=True to learn a "
                   f"projection of the student's channels along dim {pair.dim}")
            raise ShapeMismatchError(
                f"pairs[{index}] ({pair.label()}): student {pair.student!r} gives {tuple(s.shape)} but teacher "
                f"{pair.teacher_name!r} gives {tuple(t.shape)}; {fix}"
            )
        return s, t

    def compute(self, student_loss: torch.Tensor | float | None = None, *,
                return_terms: bool = False) -> Any:
        """The combined loss of the last forward (see :func:`modeopt_distill.compute_kd_loss`)."""
        if self._inputs is None:
            raise DistillError(
                "no forward to distil from: call the model on a batch first; compute_kd_loss() uses (and then "
                "releases) the outputs and inputs of the last forward"
            )
        args, kwargs, versions = self._inputs
        changed = [i for i, (t, v) in enumerate(versions) if t._version != v]
        if changed:
            raise DistillError(
                "the student modified its input in place during its forward (e.g. an inplace activation on the "
                "input), so the teacher cannot see the same batch; make that first operation out of place"
            )
        try:
            self._run_teacher(args, kwargs)
            terms: dict[str, torch.Tensor] = {}
            total: torch.Tensor | None = None
            for i, pair in enumerate(self.config.pairs):
                s, t = self._pair_tensors(i, pair)
                temperature = pair.temperature or self.config.temperature
                term = kd_term(pair.loss, s, t, temperature=temperature, dim=pair.dim)
                label = pair.label()
                terms[label if label not in terms else f"{label} #{i}"] = term
                total = pair.weight * term if total is None else total + pair.weight * term
            assert total is not None  # pairs has at least one entry
            if student_loss is not None:
                total = total + self.config.student_loss_weight * student_loss
        finally:
            self._reset()
        return (total, terms) if return_terms else total

    def probe(self, dummy_input: Any) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """One eval-mode, no-grad forward of student and teacher; the (student, teacher) shape of every pair.

        Checks every pair (modules ran once, outputs are tensors) and leaves the model as it was.
        """
        args, kwargs = unpack_input(dummy_input)
        self._hook_submodules()
        try:
            with _flags(self.model, True), torch.no_grad():
                self._start(args, kwargs)
                out = self.model.forward(*args, **kwargs)  # the root's hooks (e.g. supernet sampling) stay out
                self._record("", out)
                self._run_teacher(args, kwargs)
                shapes = []
                for i, pair in enumerate(self.config.pairs):
                    s, t = self._value(pair, i, "student"), self._value(pair, i, "teacher")
                    shapes.append((tuple(s.shape), tuple(t.shape)))
        finally:
            self._unhook()
            self._reset()
        return shapes
