"""The record of applied modes that lives on a converted model, and the chain rules over it."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .config import ModeConfig
from .errors import ModeChainError, StateError
from .mode import Metadata, ModeDescriptor
from .registry import _REGISTRY

__all__ = ["ModeRecord", "ModeoptStateList", "check_chain", "export_stack", "get_state", "unwrap_model"]

_ATTR = "_modeopt_state"


@dataclass
class ModeRecord:
    """One applied mode: its descriptor, validated config and metadata (may hold tensors)."""

    mode: ModeDescriptor
    config: ModeConfig
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.mode.name


class ModeoptStateList:
    """The ordered list of applied modes, stored on the root module."""

    def __init__(self, records: Sequence[ModeRecord] = ()) -> None:
        self.records: list[ModeRecord] = list(records)

    def __iter__(self) -> Iterator[ModeRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> ModeRecord | None:
        return self.records[-1] if self.records else None

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __deepcopy__(self, memo: dict[int, Any]) -> ModeoptStateList:
        return ModeoptStateList(
            [ModeRecord(r.mode, r.config.model_copy(deep=True), copy.deepcopy(r.metadata, memo)) for r in self.records]
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def get_state(model: nn.Module, *, create: bool = False) -> ModeoptStateList | None:
    """The state list on the root module; raises if a submodule (not the root) carries one."""
    state = model.__dict__.get(_ATTR)
    if state is None:
        for name, sub in model.named_modules():
            if name and _ATTR in sub.__dict__:
                raise StateError(
                    f"modeopt state is recorded on submodule {name!r}, not on the model passed in; "
                    f"call this function on that submodule (the model that modes were applied to)"
                )
        if create:
            state = ModeoptStateList()
            model.__dict__[_ATTR] = state
    return state


def _set_state(model: nn.Module, state: ModeoptStateList | None) -> None:
    if state is None:
        model.__dict__.pop(_ATTR, None)
    else:
        model.__dict__[_ATTR] = state


def export_stack(modes: Sequence[ModeDescriptor]) -> list[ModeDescriptor]:
    """The modes still waiting for their export mode, bottom first."""
    stack: list[ModeDescriptor] = []
    for mode in modes:
        if mode.is_export_mode:
            if not stack or stack[-1].export_mode != mode.name:
                raise StateError(f"inconsistent recorded modes: export mode {mode.name!r} closes nothing")
            stack.pop()
        if mode.export_mode is not None:
            stack.append(mode)
    return stack


def _allowed_after(prev: ModeDescriptor, new: ModeDescriptor, why: str) -> None:
    nxt = prev.next_modes
    hint = f"; {prev.next_modes_hint}" if prev.next_modes_hint else ""
    if nxt is not None and new.name not in nxt:
        # Only name what can be applied now: a mode of a plugin that is not installed is no advice.
        available = sorted(n for n in nxt if n in _REGISTRY)
        allowed = f"only {available} may follow it" if available else "no available mode may follow it"
        raise ModeChainError(f"cannot apply {new.name!r} {why} {prev.name!r}: {allowed}{hint}")
    if new.name in prev.next_prohibited_modes:
        raise ModeChainError(
            f"cannot apply {new.name!r} {why} {prev.name!r}: {prev.name!r} prohibits it "
            f"(prohibited: {sorted(prev.next_prohibited_modes)}){hint}"
        )


def check_chain(applied: Sequence[ModeDescriptor], new: Sequence[ModeDescriptor]) -> None:
    """Check that ``new`` modes may be appended, one by one, to the ``applied`` ones.

    Raises:
        ModeChainError: saying which mode may follow instead.
    """
    chain = list(applied)
    for mode in new:
        stack = export_stack(chain)
        if mode.is_export_mode:
            if not stack or stack[-1].export_mode != mode.name:
                pending = stack[-1].export_mode if stack else None
                hint = f"the pending export mode is {pending!r}" if pending else "no mode is waiting for an export"
                raise ModeChainError(f"cannot apply export mode {mode.name!r} now: {hint}")
        if chain:
            _allowed_after(chain[-1], mode, "after")
        if stack and stack[-1] is not (chain[-1] if chain else None):
            # An un-exported mode keeps constraining what follows until its export mode is applied.
            _allowed_after(stack[-1], mode, "while waiting for the export of")
        chain.append(mode)
