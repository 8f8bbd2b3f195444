"""Applying, recording, exporting, restoring and searching modes on a model."""

from __future__ import annotations

import contextlib
import copy
import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

from torch import nn

from . import plugins
from ._args import describe, require_module
from ._rollback import ModuleSnapshot
from .config import ModeConfig, validate_config
from .errors import ConfigError, ConvertError, ModeoptError, SearchError, StateError
from .mode import ModeDescriptor
from .registry import _REGISTRY
from .state import ModeRecord, _set_state, check_chain, export_stack, get_state, unwrap_model

__all__ = [
    "ModeLike",
    "applied_modes",
    "apply_mode",
    "export",
    "modeopt_state",
    "restore_from_modeopt_state",
    "rollback_on_error",
    "search",
    "validate_modeopt_state",
]

_ModeItem = Union[str, ModeDescriptor, tuple[str | ModeDescriptor, Any]]
ModeLike = Union[_ModeItem, Sequence[_ModeItem]]

STATE_VERSION = 1


class _AdHocPlugin:
    """Wraps a descriptor passed directly to ``apply_mode`` so that restore can find it by name."""

    def __init__(self, mode: ModeDescriptor) -> None:
        self.mode = mode

    @plugins.hookspecs.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(self.mode)


def _resolve(mode: str | ModeDescriptor) -> ModeDescriptor:
    if isinstance(mode, ModeDescriptor):
        if mode.name not in _REGISTRY:
            plugins.register_plugin(_AdHocPlugin(mode), name=f"adhoc:{mode.name}")
        return _REGISTRY.get(mode.name)
    if not isinstance(mode, str):
        raise ConfigError(f"a mode must be a name or a ModeDescriptor, got {type(mode).__name__}: {mode!r}")
    return _REGISTRY.get(mode)


def _normalize(mode: ModeLike) -> list[tuple[ModeDescriptor, ModeConfig]]:
    items: Sequence[Any]
    if isinstance(mode, (str, ModeDescriptor)) or (
        isinstance(mode, tuple) and len(mode) == 2 and isinstance(mode[0], (str, ModeDescriptor))
        and (mode[1] is None or isinstance(mode[1], (Mapping, ModeConfig)))
    ):
        items = [mode]
    elif isinstance(mode, Sequence):
        items = mode
    else:
        raise ConfigError(f"mode must be a name, a descriptor or a list of them, got {type(mode).__name__}")
    out = []
    for item in items:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ConfigError(f"a mode entry must be a name or a (name, config) pair, got {item!r}")
            desc, raw = _resolve(item[0]), item[1]
        else:
            desc, raw = _resolve(item), None
        out.append((desc, validate_config(desc.config_class, raw)))
    return out


def _unknown_keys(keys: list[str], accepted: set[str]) -> str:
    hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, sorted(accepted), n=1))
             else repr(k) for k in keys]
    return ", ".join(hints)


def _mode_kwargs(modes: list[tuple[ModeDescriptor, ModeConfig]], mode_kwargs: Any) -> list[dict[str, Any]]:
    """One kwargs dict per mode; keys no mode accepts are a ConfigError (naming them), not silently ignored."""
    if mode_kwargs is None:
        return [{} for _ in modes]
    if isinstance(mode_kwargs, Mapping):
        per_mode = [dict(mode_kwargs) for _ in modes]
        shared = True
    elif isinstance(mode_kwargs, Sequence) and not isinstance(mode_kwargs, (str, bytes)):
        if len(mode_kwargs) != len(modes):
            raise ConfigError(f"got {len(mode_kwargs)} mode_kwargs dicts for {len(modes)} modes")
        if not all(isinstance(k, Mapping) for k in mode_kwargs):
            raise ConfigError("mode_kwargs must be a dict, or a list of one dict per mode")
        per_mode, shared = [dict(k) for k in mode_kwargs], False
    else:
        raise ConfigError(f"mode_kwargs must be a dict (or one dict per mode), got {describe(mode_kwargs)}")
    for kwargs in per_mode:
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"mode_kwargs keys must be str (keyword arguments of the modes' convert), got {bad[:5]}")
    accepted = [desc.accepted_mode_kwargs for desc, _ in modes]
    if shared:  # one dict for all modes: every key must be for at least one of them
        if all(a is not None for a in accepted):
            union = set().union(*(a for a in accepted if a is not None))
            unknown = [k for k in per_mode[0] if k not in union]
            if unknown:
                names = [d.name for d, _ in modes]
                raise ConfigError(f"mode_kwargs key(s) {_unknown_keys(unknown, union)} are accepted by none of the "
                                  f"modes {names} (accepted: {sorted(union)}); remove them")
    else:
        for (desc, _), kwargs, ok in zip(modes, per_mode, accepted):
            unknown = [k for k in kwargs if ok is not None and k not in ok]
            if unknown and ok is not None:
                raise ConfigError(f"mode {desc.name!r} does not accept mode_kwargs {_unknown_keys(unknown, set(ok))} "
                                  f"(accepted: {sorted(ok)}); remove them")
    return per_mode


def applied_modes(model: nn.Module) -> list[str]:
    """Names of the modes applied to ``model``, in order."""
    state = get_state(unwrap_model(require_module(model, "applied_modes")))
    return state.names() if state else []


def apply_mode(
    model: nn.Module,
    mode: ModeLike,
    mode_kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> nn.Module:
    """Apply one or more modes to ``model`` and record them; return the converted model.

    Args:
        mode: a name, a descriptor, a ``(name, config)`` pair or a list of those.
        mode_kwargs: non-serialisable extras passed to each convert (one dict for all modes, or one
            per mode); not saved.

    All chain rules are checked before anything changes; if a convert fails, the model and its
    recorded state are rolled back and a ``ConvertError`` is raised. DP/DDP wrappers are unwrapped
    (wrap the returned model again).
    """
    model = unwrap_model(require_module(model, "apply_mode"))
    modes = _normalize(mode)
    if not modes:
        return model
    kwargs_list = _mode_kwargs(modes, mode_kwargs)

    state = get_state(model)
    applied = [r.mode for r in state] if state else []
    check_chain(applied, [m for m, _ in modes])

    hook = plugins.get_plugin_manager().hook
    snapshot = ModuleSnapshot(model)
    old_state = copy.deepcopy(state) if state is not None else None
    current = model
    try:
        if state is not None and state.last is not None:
            last = state.last
            hook.modeopt_update_for_new_mode(mode=last.mode, model=model, config=last.config, metadata=last.metadata)
        records = list(state.records) if state else []
        for desc, config in modes:
            result = hook.modeopt_convert(mode=desc, model=current, config=config, mode_kwargs=kwargs_list.pop(0))
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
                raise ConvertError(f"mode {desc.name!r} convert must return (model, metadata), got {type(result)}")
            new_model, metadata = result
            if new_model is not current:
                _set_state(current, None)
            current = new_model
            if desc.is_export_mode:
                _compact_closed(records, desc, dict(metadata or {}))
            records.append(ModeRecord(desc, config, dict(metadata or {})))
        new_state = get_state(current, create=True)
        assert new_state is not None
        new_state.records = records
        if current is not model:
            _set_state(model, old_state)
    except BaseException as exc:
        snapshot.restore()
        _set_state(model, old_state)
        if isinstance(exc, ModeoptError) or not isinstance(exc, Exception):
            raise
        raise ConvertError(f"applying mode(s) failed, model left unchanged: {type(exc).__name__}: {exc}") from exc
    return current


def _compact_closed(records: list[ModeRecord], export_mode: ModeDescriptor, metadata: dict[str, Any]) -> None:
    """Let an export mode replace the metadata of the mode it closes (see ``compact_closed_metadata``)."""
    stack_before = export_stack([r.mode for r in records])
    closed = stack_before[-1]  # check_chain guaranteed that this export closes the top of the stack
    index = max(i for i, r in enumerate(records) if r.mode is closed)
    compacted = export_mode.compact_closed_metadata(records[index].metadata, metadata)
    if compacted is not None:
        if not isinstance(compacted, Mapping):
            raise ConvertError(
                f"export mode {export_mode.name!r}: compact_closed_metadata must return a dict or None, "
                f"got {type(compacted).__name__}"
            )
        records[index] = ModeRecord(records[index].mode, records[index].config, dict(compacted))


@contextlib.contextmanager
def rollback_on_error(model: nn.Module) -> Iterator[None]:
    """Run a block that converts ``model`` (``apply_mode``, then e.g. a search); on any error put back
    its classes, attributes, submodules and recorded modes as they were before the block.

    Tensor values are not saved (that would double the memory): modes never edit them in place, and
    searchers restore what they change themselves (FastNAS's channel sort, BatchNorm statistics).
    """
    model = unwrap_model(model)
    snapshot = ModuleSnapshot(model)
    state = get_state(model)
    old_state = copy.deepcopy(state) if state is not None else None
    try:
        yield
    except BaseException:
        snapshot.restore()
        _set_state(model, old_state)
        raise


def export(model: nn.Module) -> nn.Module:
    """Apply the export mode that the most recent un-exported mode is waiting for."""
    model = unwrap_model(require_module(model, "export"))
    state = get_state(model)
    stack = export_stack([r.mode for r in state]) if state else []
    if not stack:
        raise ModeoptError(
            f"nothing to export: applied modes {state.names() if state else []} have no pending export mode"
        )
    export_name = stack[-1].export_mode
    assert export_name is not None
    return apply_mode(model, export_name)


def modeopt_state(model: nn.Module) -> dict[str, Any]:
    """A deep copy of the recorded modes (after the last mode's ``update_for_save``).

    Layout: ``{"state_version", "modeopt_version", "modes": [{"name", "config", "metadata"}, ...]}``.
    """
    from . import __version__

    model = unwrap_model(model)
    state = get_state(model)
    modes: list[dict[str, Any]] = []
    if state is not None and state.last is not None:
        last = state.last
        plugins.get_plugin_manager().hook.modeopt_update_for_save(
            mode=last.mode, model=model, config=last.config, metadata=last.metadata
        )
        for rec in state:
            if rec.mode.save_mode_in_state:
                modes.append(
                    {"name": rec.name, "config": rec.config.dump(), "metadata": copy.deepcopy(rec.metadata)}
                )
    return {"state_version": STATE_VERSION, "modeopt_version": __version__, "modes": modes}


def validate_modeopt_state(state: Mapping[str, Any]) -> list[tuple[ModeDescriptor, ModeConfig, dict[str, Any]]]:
    """Check a state dict without touching any model; return the validated (mode, config, metadata)."""
    if not isinstance(state, Mapping) or not isinstance(state.get("modes"), list):
        raise StateError("not a modeopt state: expected a dict with a 'modes' list (from modeopt_state())")
    version = state.get("state_version", STATE_VERSION)
    if version != STATE_VERSION:
        raise StateError(f"state version {version} is not supported by this modeopt (reads {STATE_VERSION})")
    out = []
    for i, entry in enumerate(state["modes"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise StateError(f"state entry {i} is malformed: expected {{'name', 'config', 'metadata'}}")
        desc = _REGISTRY.get(entry["name"])
        config = validate_config(desc.config_class, entry.get("config"))
        metadata = entry.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise StateError(f"metadata of mode {entry['name']!r} must be a dict")
        out.append((desc, config, dict(metadata)))
    check_chain([], [d for d, _, _ in out])
    return out


def restore_from_modeopt_state(model: nn.Module, state: Mapping[str, Any], *, dry_run: bool = False) -> nn.Module:
    """Re-run each recorded mode's ``restore`` on a fresh, unconverted model (weights not loaded).

    Args:
        dry_run: tells the ``modeopt_restore`` hooks that this is the validation pass on a data-less
            (``meta``-device) copy made by ``modeopt_core.restore`` (see the hook's docs).
    """
    model = unwrap_model(require_module(model, "restore_from_modeopt_state"))
    entries = validate_modeopt_state(state)
    if get_state(model):
        raise StateError(
            f"the model already has modes applied ({applied_modes(model)}); restore onto a fresh model"
        )
    hook = plugins.get_plugin_manager().hook
    snapshot = ModuleSnapshot(model)
    current = model
    records: list[ModeRecord] = []
    try:
        for desc, config, metadata in entries:
            metadata = copy.deepcopy(metadata)
            new_model = hook.modeopt_restore(
                mode=desc, model=current, config=config, metadata=metadata, dry_run=dry_run
            )
            if not isinstance(new_model, nn.Module):
                raise ConvertError(f"mode {desc.name!r} restore must return a module, got {type(new_model)}")
            current = new_model
            records.append(ModeRecord(desc, config, metadata))
    except BaseException as exc:
        snapshot.restore()
        _set_state(model, None)
        if isinstance(exc, ModeoptError) or not isinstance(exc, Exception):
            raise
        raise ConvertError(f"restoring modes failed, model left unchanged: {type(exc).__name__}: {exc}") from exc
    new_state = get_state(current, create=True)
    assert new_state is not None
    new_state.records = records
    return current


def search(
    model: nn.Module,
    constraints: Mapping[str, Any],
    dummy_input: Any,
    config: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the search algorithm of the last applied mode that has one; return ``(model, results)``."""
    model = unwrap_model(require_module(model, "search"))
    state = get_state(model)
    for rec in reversed(state.records if state else []):
        try:
            searcher_cls = rec.mode.search_algorithm
        except SearchError:
            continue
        searcher = searcher_cls()
        results = searcher.search(model, constraints, dummy_input, dict(config or {}))
        return model, results
    raise SearchError(
        f"no applied mode has a search algorithm (applied: {applied_modes(model)}); apply a searchable "
        "mode such as 'fastnas' or 'autonas' first"
    )

