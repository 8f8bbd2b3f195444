"""The dynamic-module machinery shared by every layer family.

A converted module keeps its class identity (its class is swapped to a generated subclass of the
original class) and its full-size parameters (``state_dict`` is unchanged). Attributes that depend on
the active subnet (``weight``, ``out_channels``, ...) become properties reading a *slice plan*: the
per-tensor index and the attribute values of the active subnet. A plan is rebuilt only when an hparam
the module depends on changed (checked with one integer comparison per access); at the max subnet
every property returns the original tensor or value, so the original ``forward`` runs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import DynamicAttributeError
from ..hparam import _EPOCH, Hparam

__all__ = [
    "DimBinding",
    "DynamicModule",
    "FlopsTerm",
    "attr_view",
    "buffer_view",
    "dynamic_class_for",
    "param_view",
]

#: A module dimension's index: None (full), a contiguous slice, or a gather index.
DimIndex = slice | torch.Tensor | None


class DimBinding:
    """One module dimension as the concatenation of channel-group segments ``(hparam, repeat)``.

    Channel ``c`` of a segment with repeat ``r`` owns features ``c*r .. c*r + r - 1`` of the segment,
    and importance sorting keeps the active channels first, so the active features of a segment are
    always its first ``active * r``.
    """

    __slots__ = ("full", "segments")

    def __init__(self, segments: Sequence[tuple[Hparam, int]]) -> None:
        self.segments = tuple(segments)
        self.full = sum(hp.original * r for hp, r in self.segments)

    def width(self) -> int:
        """Active width of the dimension."""
        return sum(hp.active * r for hp, r in self.segments)

    def index(self, device: torch.device | None = None) -> DimIndex:
        """The active features: None when all are active, a slice when they are contiguous."""
        if all(hp.active == hp.original for hp, _ in self.segments):
            return None
        ranges = []
        offset = 0
        for hp, r in self.segments:
            ranges.append((offset, offset + hp.active * r))
            offset += hp.original * r
        # contiguous when every segment but the last is complete
        if all(e - s == hp.original * r for (s, e), (hp, r) in zip(ranges[:-1], self.segments[:-1])):
            return slice(0, ranges[-1][1])
        return torch.cat([torch.arange(s, e, device=device) for s, e in ranges])


#: One part of a layer's FLOPs: ``(flops at the max subnet, factors it is proportional to)``, each factor a
#: constant, a role's ``DimBinding`` or an ``Hparam`` (see ``DynamicModule.dynamic_flops_terms``).
FlopsTerm = tuple[int, Sequence["int | DimBinding | Hparam"]]


class _TensorIndex:
    """How to take the active part of one tensor: basic slices (a view) then index gathers."""

    __slots__ = ("gathers", "slices")

    def __init__(self, ndim: int, per_dim: dict[int, slice | torch.Tensor]) -> None:
        slices = [slice(None)] * ndim
        gathers = []
        for dim, ix in sorted(per_dim.items()):
            if isinstance(ix, slice):
                slices[dim] = ix
            else:
                gathers.append((dim, ix))
        self.slices = tuple(slices) if any(s != slice(None) for s in slices) else None
        self.gathers = tuple(gathers)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.slices is not None:
            t = t[self.slices]
        for dim, ix in self.gathers:
            t = t.index_select(dim, ix)
        return t


class _Plan:
    __slots__ = ("attrs", "epoch", "extra", "key", "tensors")

    def __init__(self, key: tuple, tensors: dict[str, _TensorIndex], attrs: dict[str, Any], extra: Any) -> None:
        self.key = key
        self.tensors = tensors
        self.attrs = attrs
        self.extra = extra
        self.epoch = -1


def _tensor_view(slot: str, name: str, doc: str) -> property:
    # ``slot`` is "_parameters" or "_buffers": both live in the instance ``__dict__``.
    def get(self: DynamicModule) -> torch.Tensor | None:
        t = self.__dict__[slot][name]
        if t is None:
            return None
        plan = self.__dict__["_dyn_plan"]
        if plan is None or plan.epoch != _EPOCH[0]:
            plan = self._dyn_sync()
        ix = plan.tensors.get(name)
        return t if ix is None else ix(t)

    return property(get, doc=doc)


def param_view(name: str) -> property:
    """A property returning the active part of parameter ``name`` (the parameter itself at max)."""
    return _tensor_view("_parameters", name, f"The active part of parameter ``{name}``.")


def buffer_view(name: str) -> property:
    """A property returning the active part of buffer ``name`` (in-place updates reach the buffer)."""
    return _tensor_view("_buffers", name, f"The active part of buffer ``{name}``.")


def attr_view(name: str) -> property:
    """A property returning the active value of attribute ``name`` (the original stays in ``__dict__``)."""

    def get(self: DynamicModule) -> Any:
        plan = self.__dict__["_dyn_plan"]
        if plan is None or plan.epoch != _EPOCH[0]:
            plan = self._dyn_sync()
        return plan.attrs[name]

    def set(self: DynamicModule, value: Any) -> None:
        raise DynamicAttributeError(
            f"{name!r} of a dynamic {type(self).__name__} follows the active subnet and cannot be assigned; "
            "change it through SearchSpace.select (or export the space first)"
        )

    return property(get, set, doc=f"The active value of ``{name}``.")


_GENERATED: dict[tuple[type, type, tuple[tuple[str, str], ...]], type] = {}


def dynamic_class_for(
    dynamic_cls: type[DynamicModule], module_cls: type[nn.Module], views: tuple[tuple[str, str], ...] = ()
) -> type[DynamicModule]:
    """The dynamic class for an instance of ``module_cls``: ``dynamic_cls`` itself when it derives from
    ``module_cls`` directly (and needs no extra views), else a generated subclass of both (so the
    instance stays a ``module_cls``).

    Args:
        views: ``(slot, name)`` pairs (``slot``: ``"_parameters"`` or ``"_buffers"``) of further tensors
            that get a view property on the generated class: tensors the structure slices besides the
            ones the dynamic class declares (e.g. a subclass's extra per-channel parameter).
    """
    views = tuple(v for v in views if not isinstance(getattr(dynamic_cls, v[1], None), property))
    # ("_attr", name): an int attribute that follows the subnet (an "attr:<name>" role)
    if dynamic_cls.__bases__[-1] is module_cls and not views:
        return dynamic_cls
    key = (dynamic_cls, module_cls, views)
    if key not in _GENERATED:
        namespace: dict[str, Any] = {"__module__": dynamic_cls.__module__}
        for slot, name in views:
            if slot == "_attr":
                namespace[name] = attr_view(name)
            else:
                namespace[name] = _tensor_view(slot, name, f"The active part of ``{name}``.")
        _GENERATED[key] = type(f"Dynamic{module_cls.__name__}", (dynamic_cls, module_cls), namespace)
    return _GENERATED[key]


class DynamicModule(nn.Module):
    """Mixin placed before the original class in a dynamic class's bases (never instantiated).

    The public contract a dynamic layer implements (see ``docs/writing-a-plugin.md``, "Custom
    searchable layers"):

    * ``dynamic_roles``: role -> the attribute naming that dimension (hparam names use it);
    * ``dynamic_full_width(module, role)``: the original width of a role (checks recorded structures);
    * ``dynamic_layout(module)``: for each role, the ``(tensor name, dim)`` pairs that role slices;
    * ``dynamic_attrs(widths)``: the active values of the attributes exposed through :func:`attr_view`,
      given the active width of each bound role (originals via :meth:`dynamic_original`);
    * optionally ``dynamic_channel_weight(role)`` (the tensor dim that scores a role's channels for
      importance sorting), ``dynamic_after_export(attrs)`` (fix plain attributes after export),
      ``dynamic_export_class(attrs)`` (the class it becomes on export, when its own class cannot
      represent the subnet), ``dynamic_flops_tensor`` (the tensor the layer's FLOPs are proportional
      to; None: constant) or, for layers whose FLOPs are a sum of differently scaling parts (attention),
      ``dynamic_flops_terms(args, kwargs)``.

    Tensors named in the layout are exposed through :func:`param_view` / :func:`buffer_view`
    properties declared on the dynamic class. Everything named ``_dyn_*`` is internal.
    """

    #: role -> attribute naming that dimension (used to name hparams)
    dynamic_roles: ClassVar[dict[str, str]] = {}
    #: the tensor whose size the module's FLOPs are proportional to (None: FLOPs are constant)
    dynamic_flops_tensor: ClassVar[str | None] = "weight"

    # ---- conversion -------------------------------------------------------------------------------
    @classmethod
    def convert(
        cls,
        module: nn.Module,
        dims: dict[str, DimBinding],
        tensors: dict[str, tuple[tuple[str, int], ...]] | None = None,
        **extra: Any,
    ) -> nn.Module:
        """Convert ``module`` in place; ``dims`` maps roles to their channel-group bindings.

        Args:
            tensors: per role, further ``(tensor name, dim)`` pairs it slices besides the class's
                ``dynamic_layout`` (from the structure: a subclass's extra per-channel tensors, or the
                tensors of ``"tensor:<name>"`` roles).
        """
        original_cls = type(module)
        d = module.__dict__
        layout = {role: tuple(entries) for role, entries in cls.dynamic_layout(module).items()}
        for role, entries in (tensors or {}).items():
            layout[role] = (*layout.get(role, ()), *(e for e in entries if e not in layout.get(role, ())))
        named = {name for entries in layout.values() for name, _ in entries}
        views = tuple(
            ("_parameters" if name in module._parameters else "_buffers", name)
            for name in sorted(named)
            if name in module._parameters or name in module._buffers
        ) + tuple(("_attr", role.split(":", 1)[1]) for role in sorted(dims) if role.startswith("attr:"))
        d["_dyn_original_cls"] = original_cls
        d["_dyn_dims"] = dims
        d["_dyn_plan"] = None
        for k, v in extra.items():
            d[f"_dyn_{k}"] = v
        d["_dyn_layout_map"] = layout
        module.__class__ = dynamic_class_for(cls, original_cls, views)
        return module

    # ---- the public contract ----------------------------------------------------------------------
    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        """The original width of ``module``'s ``role`` dimension (for structure validation)."""
        raise NotImplementedError

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        """For each role, the ``(tensor name, dim)`` pairs it slices (called on the unconverted module)."""
        raise NotImplementedError

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        """Active values of the ``attr_view`` attributes; ``widths`` holds each bound role's active width."""
        return {}

    def dynamic_original(self, name: str) -> Any:
        """The original value of an attribute that an ``attr_view`` shadows."""
        return self.__dict__[name]

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The ``(tensor, dim)`` whose slices along ``dim`` belong to the channels of ``role``; importance
        scores channels by it. Default: the ``weight`` entry of the role's layout, if any."""
        for name, dim in self.__dict__["_dyn_layout_map"].get(role, ()):
            if name == "weight":
                return name, dim
        return None

    def dynamic_after_export(self, attrs: dict[str, Any]) -> None:
        """Fix derived plain attributes after export (e.g. conv padding caches); ``attrs`` as exported."""

    def dynamic_export_class(self, attrs: dict[str, Any]) -> type[nn.Module]:
        """The class this module becomes on export (``attrs``: the exported attribute values). Default: its
        original class; a layer whose class cannot describe every subnet returns a subclass of it that
        can (``nn.MultiheadAttention`` with fewer heads than ``embed_dim / head_dim``)."""
        return self.__dict__["_dyn_original_cls"]

    def dynamic_flops_terms(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FlopsTerm] | None:
        """The FLOPs of one call with these arguments at the max subnet, as terms that scale differently, or
        None (FLOPs proportional to ``dynamic_flops_tensor``).

        Each term is ``(flops, factors)``: its FLOPs at the max subnet and what they are proportional to,
        each factor a constant, a role's :class:`DimBinding` or an :class:`Hparam` (a subnet's term is
        ``flops * prod(active factors) / prod(max factors)``). The profiler checks that the terms add up to
        what ``FlopCounterMode`` measures, so they must follow its counting (2 FLOPs per multiply-add of
        every matmul; element-wise ops and normalisations are free).
        """
        return None

    def _dyn_extra_hparams(self) -> tuple[Hparam, ...]:
        return ()

    def _dyn_extra_indices(self) -> dict[str, dict[int, slice]]:
        """Extra per-tensor slices not driven by channel roles (kernel crop)."""
        return {}

    def _dyn_plan_extra(self) -> Any:
        return None

    def _dyn_tensor_factors(self, name: str, shape: Sequence[int]) -> list[int | DimBinding | Hparam]:
        """The size of each dim of tensor ``name`` as a constant, a channel binding or a kernel hparam."""
        factors: list[int | DimBinding | Hparam] = list(shape)
        for role, entries in self.__dict__["_dyn_layout_map"].items():
            binding = self.__dict__["_dyn_dims"].get(role)
            if binding is None:
                continue
            for tname, dim in entries:
                if tname == name:
                    factors[dim % len(shape)] = binding
        return factors

    # ---- plans ------------------------------------------------------------------------------------
    def _dyn_hparams(self) -> list[Hparam]:
        """Every hparam this module depends on."""
        hps = [hp for b in self.__dict__["_dyn_dims"].values() for hp, _ in b.segments]
        return hps + list(self._dyn_extra_hparams())

    def _dyn_key(self) -> tuple:
        return tuple(hp.active for hp in self._dyn_hparams())

    def _dyn_device(self) -> torch.device | None:
        for t in self._parameters.values():
            if t is not None:
                return t.device
        for b in self._buffers.values():
            if b is not None:
                return b.device
        return None

    def _dyn_sync(self) -> _Plan:
        """Return the current plan, rebuilding it only if an hparam it depends on changed."""
        d = self.__dict__
        plan = d["_dyn_plan"]
        key = self._dyn_key()
        if plan is None or plan.key != key:
            plan = self._dyn_build_plan(key)
            d["_dyn_plan"] = plan
        plan.epoch = _EPOCH[0]
        return plan

    def _dyn_build_plan(self, key: tuple) -> _Plan:
        device = self._dyn_device()
        per_tensor: dict[str, dict[int, slice | torch.Tensor]] = {}
        for role, entries in self.__dict__["_dyn_layout_map"].items():
            binding = self.__dict__["_dyn_dims"].get(role)
            ix = None if binding is None else binding.index(device)
            if ix is None:
                continue
            for name, dim in entries:
                per_tensor.setdefault(name, {})[dim] = ix
        for name, crop in self._dyn_extra_indices().items():
            per_tensor.setdefault(name, {}).update(crop)
        tensors = {}
        for name, per_dim in per_tensor.items():
            t = self._parameters.get(name, self._buffers.get(name))
            if t is None:
                continue
            tensors[name] = _TensorIndex(t.ndim, {dim % t.ndim: ix for dim, ix in per_dim.items()})
        widths = {role: binding.width() for role, binding in self.__dict__["_dyn_dims"].items()}
        attrs = self.dynamic_attrs(widths)
        attrs.update({role.split(":", 1)[1]: w for role, w in widths.items() if role.startswith("attr:")})
        return _Plan(key, tensors, attrs, self._dyn_plan_extra())

    def _dyn_tensor_index(self, name: str) -> _TensorIndex | None:
        return self._dyn_sync().tensors.get(name)

    def _apply(self, fn: Any, recurse: bool = True) -> DynamicModule:
        # .to()/.half() may replace buffers and move tensors: gather indices must follow
        out = super()._apply(fn, recurse)
        self.__dict__["_dyn_plan"] = None
        return out

    # ---- export -----------------------------------------------------------------------------------
    def _dyn_export(self, tied: dict[int, list[nn.Parameter]] | None = None) -> None:
        """Turn this module back into a plain instance of its original class, at the active subnet.

        Args:
            tied: shared across one export: the new parameters made from each original parameter, so a
                parameter shared by several modules (tied embeddings) stays one parameter when they
                slice it alike.
        """
        plan = self._dyn_sync()
        tied = {} if tied is None else tied
        with torch.no_grad():
            for name, ix in plan.tensors.items():
                if name in self._parameters:
                    p = self._parameters[name]
                    assert p is not None
                    active = ix(p)
                    same = next((q for q in tied.get(id(p), []) if q.shape == active.shape and torch.equal(q, active)), None)
                    if same is None:
                        same = nn.Parameter(active.detach().clone(), requires_grad=p.requires_grad)
                        tied.setdefault(id(p), []).append(same)
                    self._parameters[name] = same
                else:
                    b = self._buffers[name]
                    assert b is not None
                    self._buffers[name] = ix(b).clone()
        fix_plain_attrs = self.dynamic_after_export  # bound now: the class is swapped back below
        export_cls = self.dynamic_export_class(plan.attrs)
        d = self.__dict__
        for k in [k for k in d if k.startswith("_dyn_")]:
            del d[k]
        self.__class__ = export_cls  # type: ignore[assignment]
        d.update(plan.attrs)
        fix_plain_attrs(plan.attrs)
