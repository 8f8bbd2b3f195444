"""``SearchSpace``: the searchable view of a converted model (hparams, subnet selection, export)."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from . import _build
from .dynamic import DynamicModule
from .errors import HparamValueError, SpaceExportedError, SubnetConfigError
from .export import export_model
from .hparam import Hparam
from .structure import SpaceStructure

__all__ = ["SAMPLE_MODES", "RulesFn", "SearchSpace", "SubnetDriver"]

RulesFn = _build.RulesFn
SAMPLE_MODES = ("max", "min", "random", "original")


@runtime_checkable
class SubnetDriver(Protocol):
    """Something that changes a space's active subnet on its own, e.g. AutoNAS's sampling of a subnet
    per training forward. Attached with :meth:`SearchSpace.attach_driver`; the space layer's functions
    (``select``, ``sample``, ``recalibrate_bn``, ``export_nas``) keep it informed."""

    def settle(self) -> dict[str, int]:
        """Put the user's selection back if the driver changed the subnet; return the selection."""
        ...

    def note_selection(self) -> None:
        """The user just selected the active subnet."""
        ...

    def note_calibrated(self) -> None:
        """The batch-norm statistics were just re-estimated for the active subnet."""
        ...

    def paused(self) -> AbstractContextManager[Any]:
        """A context in which the driver leaves the subnet alone (the caller manages it)."""
        ...

    def detach(self) -> None:
        """Stop driving (remove hooks from the model); the user's selection stays active."""
        ...


class SearchSpace:
    """A model converted in place to a supernet, with one hparam per searchable dimension.

    Create it with :meth:`build` (or :meth:`restore`); the constructor is internal.
    """

    def __init__(self, model: nn.Module, structure: SpaceStructure, built: _build.Built) -> None:
        self._model = model
        self._structure = structure
        self._built = built
        self._exported = False
        self._driver: SubnetDriver | None = None

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, structure: SpaceStructure, rules: RulesFn, *, uniform: bool = False) -> SearchSpace:
        """Convert ``model`` in place according to ``structure`` and ``rules``.

        ``rules(module_name, module)`` returns that module's resolved rule dict or None (freeze it).
        Deterministic: the same model, structure and rules always give the same space (names,
        choices, order), so a recorded structure rebuilds the identical space. On any error the
        model is left unchanged.
        """
        return cls(model, structure, _build.build(model, structure, rules, uniform=uniform))

    @classmethod
    def restore(
        cls,
        model: nn.Module,
        structure: SpaceStructure,
        rules: RulesFn,
        config: Mapping[str, int] | None = None,
        *,
        uniform: bool = False,
    ) -> SearchSpace:
        """Rebuild a recorded space on a fresh model and, if given, select ``config`` (strictly)."""
        space = cls.build(model, structure, rules, uniform=uniform)
        if config is not None:
            space.select(config)
        return space

    @property
    def model(self) -> nn.Module:
        """The converted model (the same object that was passed to :meth:`build`)."""
        return self._model

    @property
    def structure(self) -> SpaceStructure:
        """The structure the space was built from (record it to restore the space)."""
        return self._structure

    @property
    def frozen(self) -> dict[str, str]:
        """Non-configurable hparams and why they are frozen."""
        return dict(self._built.frozen)

    # ---- drivers ----------------------------------------------------------------------------------
    @property
    def driver(self) -> SubnetDriver | None:
        """The attached :class:`SubnetDriver` (None when the subnet only changes by ``select``)."""
        return self._driver

    def attach_driver(self, driver: SubnetDriver) -> None:
        """Attach ``driver`` (detaching the previous one first)."""
        if not isinstance(driver, SubnetDriver):
            raise TypeError(f"{type(driver).__name__} does not implement the SubnetDriver protocol")
        self.detach_driver()
        self._driver = driver

    def detach_driver(self) -> None:
        """Detach the driver, if any (it removes its hooks; the user's selection stays active)."""
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.detach()

    def settled(self) -> SearchSpace:
        """This space after its driver (if any) put the user's selection back."""
        if self._driver is not None:
            self._driver.settle()
        return self

    def driver_paused(self) -> AbstractContextManager[Any]:
        """A context in which the driver (if any) leaves the subnet and statistics to the caller."""
        return self._driver.paused() if self._driver is not None else contextlib.nullcontext()

    def _alive(self) -> None:
        if self._exported:
            raise SpaceExportedError(
                "this search space was exported in place and its model is now a plain model; rebuild a "
                "space (SearchSpace.restore) on a fresh model to search again"
            )

    # ---- hparams ----------------------------------------------------------------------------------
    def named_hparams(self, configurable: bool | None = True) -> Iterator[tuple[str, Hparam]]:
        """``(name, hparam)`` pairs: configurable ones (default), frozen ones (False) or all (None)."""
        for name, hp in self._built.hparams.items():
            if configurable is None or hp.is_configurable == configurable:
                yield name, hp

    def get_hparam(self, name: str) -> Hparam:
        """The hparam called ``name``; ``SubnetConfigError`` lists close names when unknown."""
        try:
            return self._built.hparams[name]
        except KeyError:
            raise SubnetConfigError(
                f"no hparam named {name!r}; known configurable hparams: {self._names(True)}"
            ) from None

    def group_hparam(self, group_id: int) -> Hparam:
        """The hparam of channel group ``group_id`` of the structure."""
        return self._built.group_hparams[group_id]

    def _names(self, configurable: bool | None) -> list[str]:
        return [n for n, _ in self.named_hparams(configurable)]

    def config(self) -> dict[str, int]:
        """``{name: active}`` for every configurable hparam."""
        return {name: hp.active for name, hp in self.named_hparams(True)}

    def size(self) -> int:
        """The number of subnets: the product of the choice counts."""
        return math.prod(len(hp.choices) for _, hp in self.named_hparams(True))

    # ---- selecting subnets ------------------------------------------------------------------------
    def select(self, config: Mapping[str, int], strict: bool = True) -> None:
        """Activate the subnet ``config``; all-or-nothing (on error the subnet is unchanged).

        With ``strict``, every configurable hparam must be given and every name must exist;
        non-configurable names are accepted when they hold their fixed value. Without ``strict``,
        unknown and missing names are ignored. Values must always be valid choices.
        """
        self._alive()
        if not isinstance(config, Mapping):
            raise SubnetConfigError(f"a subnet config must be a dict of name -> int, got {type(config).__name__}")
        hps = self._built.hparams
        unknown = sorted(k for k in config if k not in hps)
        missing = [n for n, hp in hps.items() if hp.is_configurable and n not in config]
        if strict and (unknown or missing):
            raise SubnetConfigError(
                "subnet config does not match the search space: "
                + (f"unknown names {unknown}; " if unknown else "")
                + (f"missing configurable names {missing}; " if missing else "")
                + "pass exactly the names of SearchSpace.config() (or strict=False to ignore these)"
            )
        updates: list[tuple[Hparam, int]] = []
        bad = []
        for name, value in config.items():
            hp = hps.get(name)
            if hp is None:
                continue
            try:
                updates.append((hp, hp.validate(value)))
            except HparamValueError as e:
                bad.append(str(e))
        if bad:
            raise SubnetConfigError("invalid subnet config: " + "; ".join(bad))
        for hp, value in updates:
            hp.active = value

    def sample(self, mode: str = "random", rng: random.Random | None = None) -> dict[str, int]:
        """Select the max, min, original or a uniformly random subnet; returns its config."""
        self._alive()
        if mode not in SAMPLE_MODES:
            raise SubnetConfigError(f"unknown sample mode {mode!r}; use one of {SAMPLE_MODES}")
        pick = {
            "max": lambda hp: hp.max,
            "min": lambda hp: hp.min,
            "original": lambda hp: hp.original,
            "random": lambda hp: (rng or random).choice(hp.choices),
        }[mode]
        for _, hp in self.named_hparams(True):
            hp.active = pick(hp)
        return self.config()

    # ---- reporting --------------------------------------------------------------------------------
    def table(self, include_frozen: bool = False) -> str:
        """A readable table of the hparams (configurable ones; frozen ones too if asked)."""
        rows = [("name", "choices", "active", "original", "sortable")]
        for name, hp in self.named_hparams(None if include_frozen else True):
            ch = hp.choices
            shown = str(list(ch)) if len(ch) <= 8 else f"[{ch[0]}, {ch[1]}, ..., {ch[-1]}] ({len(ch)} choices)"
            rows.append((name, shown, str(hp.active), str(hp.original), "yes" if hp.sortable else "no"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_conf = sum(1 for _ in self.named_hparams(True))
        lines.append(f"{n_conf} configurable hparams, {self.size()} subnets, {len(self._built.frozen)} frozen")
        if include_frozen:
            lines.extend(f"  frozen {n}: {why}" for n, why in self._built.frozen.items())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SearchSpace({sum(1 for _ in self.named_hparams(True))} hparams, size={self.size()})"

    # ---- sorting and export -----------------------------------------------------------------------
    def sort_by_importance(self, names: list[str] | None = None, *, log: list[Any] | None = None,
                           scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Physically reorder channels so the most important come first (see ``importance``; ``log``
        records the changes for ``importance.undo_sort``; ``scores`` replace the weight norms)."""
        self._alive()
        from .importance import sort_by_importance

        return sort_by_importance(self, names, log=log, scores=scores)

    def activation_importance(self, forward_loop: Callable[[nn.Module], Any],
                              names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-channel importance from calibration data (``importance.activation_importance``), for
        :meth:`sort_by_importance`'s ``scores``."""
        self._alive()
        from .importance import activation_importance

        return activation_importance(self, forward_loop, names)

    def contribution_importance(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-channel importance from the weights, as each channel's contribution to its readers
        (``importance.contribution_importance``), for :meth:`sort_by_importance`'s ``scores``."""
        self._alive()
        from .importance import contribution_importance

        return contribution_importance(self, names)

    def undo_sort(self, log: list[Any]) -> None:
        """Put back, bit for bit, every channel order a :meth:`sort_by_importance` with ``log`` changed."""
        self._alive()
        from .importance import undo_sort

        undo_sort(self, log)

    def export(self, inplace: bool = True) -> nn.Module:
        """A plain torch model of the active subnet (original classes, smaller weights).

        In place by default (this space is then dead); ``inplace=False`` exports a deep copy and
        keeps the supernet.
        """
        self._alive()
        if not inplace:
            return export_model(copy.deepcopy(self._model))
        self._exported = True
        return export_model(self._model)

    def dynamic_modules(self) -> dict[str, DynamicModule]:
        """Converted modules by qualified name."""
        return dict(self._built.dynamic)

    def members(self, group_id: int) -> list[_build.Member]:
        """Where channel group ``group_id`` lives (module, role, segment offset, repeat)."""
        return list(self._built.members[group_id])

    def depth_hparams(self) -> dict[str, Hparam]:
        """Depth hparam per sequential module name (also non-configurable ones)."""
        return dict(self._built.depth_hparams)

    def block_conditions(self) -> dict[str, tuple[Hparam, int]]:
        """Every child of a depth container -> ``(hparam, index)``: it runs while ``hparam.active > index``
        (a trailing depth, or a block's own ``keep`` hparam with index 0)."""
        return dict(self._built.blocks)

    def block_hparams(self) -> dict[str, Hparam]:
        """The configurable ``keep`` hparam of each droppable block of a block list, by hparam name."""
        return {hp.name: hp for hp, index in self._built.blocks.values() if index == 0 and hp.choices == (0, 1)}
