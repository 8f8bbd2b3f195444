"""Model checkpoints: weights plus the applied modes in one safetensors file; no pickle, no code on load.

``save(model, path)`` writes the model's ``state_dict`` tensors, the tensors held in the modes'
metadata, and the mode state as JSON in the header, atomically. ``restore(model, path)`` checks the
whole file and the fit with ``model`` before it touches ``model``, then re-applies the modes and
loads the weights tensor by tensor from a memory map. See ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from ._codec import RESERVED_PREFIX, decode, encode, from_json, to_json
from ._container import (
    VERSION_KEY,
    Header,
    TensorReader,
    check_format,
    parse_aliases,
    prepare_tensors,
    read_header,
    verify_digest,
    write_container,
)
from ._model_io import Layout, layout_of, load_weights, meta_shadow, model_tensors
from ._rollback import ModuleSnapshot
from .conversion import applied_modes, modeopt_state, restore_from_modeopt_state, validate_modeopt_state
from .errors import CheckpointError, ConvertError, ModeNotFoundError, ModeoptError
from .registry import get_mode, list_modes, mode_provider
from .state import unwrap_model

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CheckpointInfo", "inspect_checkpoint", "restore", "save"]

_log = logging.getLogger(__name__)

FORMAT_NAME = "modeopt"
FORMAT_VERSION = 1
_STATE_PREFIX = RESERVED_PREFIX + "state/"
_EXTRA_PREFIX = RESERVED_PREFIX + "extra/"
_FOREIGN_HINT = (
    "modeopt restore() reads files written by modeopt save(); for plain safetensors weights use "
    "safetensors.torch.load_file() and model.load_state_dict()"
)
_SHOW = 5  # names listed per category in mismatch reports


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _provider(name: str) -> tuple[str, str]:
    try:
        return mode_provider(name)
    except ModeNotFoundError:  # its plugin was unregistered after the mode was applied
        return ("<unknown>", "")


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save weights and applied modes of ``model`` to ``path`` atomically (DP/DDP wrappers are unwrapped).

    Under ``torch.distributed`` with several processes this is a collective: call it on every rank;
    rank 0 writes the file and every rank returns once it is complete, so any rank may ``restore`` it
    next (calling it on rank 0 alone would leave rank 0 waiting for the others).

    Raises:
        CheckpointError: the state holds values that cannot be stored (the message says where), or
            the file cannot be written; an existing ``path`` is then left as it was. Other ranks then
            raise :class:`~modeopt_core.distributed.DistributedError` naming rank 0's error.
    """
    model = unwrap_model(model)
    distributed.run_on_main(lambda: _write(model, path))


def _write(model: nn.Module, path: str | os.PathLike[str]) -> None:
    from . import __version__

    state = modeopt_state(model)
    providers = {entry["name"]: list(_provider(entry["name"])) for entry in state["modes"]}
    weights, extra, versions = model_tensors(model)
    reserved = [k for k in [*weights, *extra] if k.startswith(RESERVED_PREFIX)]
    if reserved:
        raise CheckpointError(f"state_dict keys {reserved[:_SHOW]} use the reserved prefix {RESERVED_PREFIX!r}; rename them")
    state_tree, state_tensors = encode(state, prefix=_STATE_PREFIX)
    extra_tree, extra_tensors = encode(extra, prefix=_EXTRA_PREFIX)
    stored, aliases = prepare_tensors({**weights, **state_tensors, **extra_tensors})
    metadata = {
        "format": FORMAT_NAME,
        VERSION_KEY: str(FORMAT_VERSION),
        "library_version": __version__,
        "model_class": _class_name(model),
        "state": to_json(state_tree),
        "mode_provider": to_json(providers),
        "aliases": to_json(aliases),
        "extra_state": to_json(extra_tree),
        "module_versions": to_json(versions),
    }
    write_container(path, stored, metadata)
    _log.info("saved %s: %d tensors (%d aliases), modes %s", path, len(stored), len(aliases), applied_modes(model))


@dataclass(frozen=True)
class _Checkpoint:
    header: Header
    state_tree: Any
    extra_tree: Any
    providers: dict[str, tuple[str, str]]
    aliases: dict[str, str]
    versions: dict[str, int]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.header.tensors[self.aliases.get(name, name)].shape

    def weight_names(self) -> set[str]:
        names = set(self.header.tensors) | set(self.aliases)
        return {n for n in names if not n.startswith(RESERVED_PREFIX)}


def _field(header: Header, key: str, default: str | None = None) -> Any:
    text = header.metadata.get(key, default)
    if text is None:
        raise CheckpointError(f"{header.path}: header lacks {key!r}; the file is damaged or not a modeopt checkpoint")
    return from_json(text, key)


def _read(path: str | os.PathLike[str], *, verify: bool = True) -> _Checkpoint:
    header = read_header(path)
    check_format(header, FORMAT_NAME, FORMAT_VERSION, hint=_FOREIGN_HINT)
    if verify:
        verify_digest(header)
    providers = _field(header, "mode_provider", "{}")
    if not isinstance(providers, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in providers.values()
    ):
        raise CheckpointError(f"{header.path}: malformed 'mode_provider' table")
    versions = _field(header, "module_versions", "{}")
    if not isinstance(versions, dict) or not all(type(v) is int for v in versions.values()):
        raise CheckpointError(f"{header.path}: malformed 'module_versions' table")
    return _Checkpoint(
        header=header,
        state_tree=_field(header, "state"),
        extra_tree=_field(header, "extra_state", "{}"),
        providers={k: (v[0], v[1]) for k, v in providers.items()},
        aliases=parse_aliases(header, header.metadata.get("aliases", "{}")),
        versions=versions,
    )


def _decode_state(ckpt: _Checkpoint, load: Callable[[str], torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    path = ckpt.header.path
    state = decode(ckpt.state_tree, load, prefix=_STATE_PREFIX)
    extra = decode(ckpt.extra_tree, load, prefix=_EXTRA_PREFIX)
    if not isinstance(state, dict) or not isinstance(state.get("modes"), list):
        raise CheckpointError(f"{path}: stored state is not a modeopt state (expected a dict with a 'modes' list)")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: stored extra state is not a dict")
    return state, extra


def _mode_names(state: dict[str, Any]) -> list[str]:
    return [e["name"] for e in state["modes"] if isinstance(e, dict) and isinstance(e.get("name"), str)]


def _validate_state(ckpt: _Checkpoint, state: dict[str, Any]) -> None:
    path = ckpt.header.path
    try:
        validate_modeopt_state(state)
    except ModeNotFoundError as exc:
        known = set(list_modes())
        lines = []
        for name in dict.fromkeys(n for n in _mode_names(state) if n not in known):
            dist, version = ckpt.providers.get(name, ("<unknown>", ""))
            if dist == "<unregistered>":
                lines.append(f"mode {name!r} was registered explicitly (not from an installed plugin) when saved: "
                             "register the same mode before restoring")
            else:
                pin = f"=={version}" if version else ""
                lines.append(f"mode {name!r} was provided by {dist} {version} when saved: install it "
                             f"(pip install '{dist}{pin}') or enable that plugin")
        raise CheckpointError(f"{path}: the checkpoint needs modes that are not available; " + "; ".join(lines)) from exc
    except ModeoptError as exc:
        raise CheckpointError(f"{path}: the recorded modes cannot be restored: {exc}") from exc
    for name in _mode_names(state):
        saved, now = ckpt.providers.get(name), mode_provider(name)
        if saved is not None and tuple(saved) != tuple(now):
            _log.warning("mode %r was saved with %s %s and is now provided by %s %s", name, *saved, *now)


def _mismatch(ckpt: _Checkpoint, layout: Layout, extra: dict[str, Any], model: nn.Module, modes: list[str]) -> str | None:
    expected = set(layout.shapes) | set(layout.extra_keys)
    in_file = ckpt.weight_names() | set(extra)
    missing = sorted(expected - in_file)
    unexpected = sorted(in_file - expected)
    shapes = sorted(
        f"{n}: file {ckpt.shape_of(n)} vs model {layout.shapes[n]}"
        for n in layout.shapes.keys() & ckpt.weight_names()
        if ckpt.shape_of(n) != layout.shapes[n]
    )
    if not (missing or unexpected or shapes):
        return None
    saved_class = ckpt.header.metadata.get("model_class", "?")
    lines = [
        f"{ckpt.header.path}: the checkpoint does not fit this model (saved from {saved_class} with modes {modes}; "
        f"restoring into {_class_name(model)}):"
    ]
    for label, items in (("missing in the file", missing), ("unexpected in the file", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:_SHOW])}{more}")
    lines.append("Build the model exactly as it was before its modes were applied at save time (same class and "
                 "constructor arguments) and call restore() on that fresh model; the model was not changed.")
    return "\n".join(lines)


def restore(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Restore modes and weights from ``path`` onto a freshly built ``model``; return the restored model.

    Everything is validated first (file integrity, format version, every mode available, configs and
    chain valid, tensor names and shapes equal to what the model has once its modes are restored);
    on any problem a :class:`CheckpointError` is raised and ``model`` is unchanged.
    """
    model = unwrap_model(model)
    ckpt = _read(path)
    path = ckpt.header.path
    if applied_modes(model):
        raise CheckpointError(
            f"{path}: restore() needs a freshly built model, but this one already has modes {applied_modes(model)}"
        )
    with TensorReader(ckpt.header, ckpt.aliases) as fetch:
        state, extra = _decode_state(ckpt, fetch)
        _validate_state(ckpt, state)
        modes = _mode_names(state)
        target = _restore_modes(model, state, ckpt, extra, modes)
        layout = layout_of(target)
        load_weights(target, fetch, extra, ckpt.versions, bounded=layout.bounded)
    _log.info("restored %s: modes %s, %d tensors", path, modes, len(layout.shapes))
    return target


def _restore_modes(model: nn.Module, state: dict[str, Any], ckpt: _Checkpoint, extra: dict[str, Any],
                   modes: list[str]) -> nn.Module:
    """Check the fit on a data-less shadow, then re-apply the modes on ``model`` itself."""
    path = ckpt.header.path
    if not modes:
        problem = _mismatch(ckpt, layout_of(model), extra, model, modes)
        if problem:
            raise CheckpointError(problem)
        return model
    shadow: nn.Module | None = None
    needs_data = [name for name in modes if not get_mode(name).supports_meta_restore]
    try:
        if not needs_data:
            shadow = restore_from_modeopt_state(meta_shadow(model), state, dry_run=True)
    except ConvertError as exc:
        if isinstance(exc.__cause__, ModeoptError) or exc.__cause__ is None:
            raise CheckpointError(f"{path}: restoring the recorded modes failed: {exc}") from exc
        _log.warning(
            "the dry-run restore on a data-less (meta) copy failed (%s); checking the fit on the model itself. "
            "A mode whose restore needs tensor data should declare supports_meta_restore = False", exc
        )
        shadow = None
    except ModeoptError as exc:
        raise CheckpointError(f"{path}: restoring the recorded modes failed: {exc}") from exc
    except Exception as exc:  # deepcopy of an exotic model: fall back to a guarded real restore
        _log.info("cannot build a data-less copy of the model (%s); checking the fit on the model itself", exc)
        shadow = None
    if shadow is not None:
        problem = _mismatch(ckpt, layout_of(shadow), extra, model, modes)
        del shadow
        if problem:
            raise CheckpointError(problem)
        snapshot = None
    else:
        snapshot = ModuleSnapshot(model)
    try:
        target = restore_from_modeopt_state(model, state)
    except ModeoptError as exc:  # restore_from_modeopt_state has already rolled the model back
        raise CheckpointError(f"{path}: restoring the recorded modes failed: {exc}") from exc
    if snapshot is not None:
        problem = _mismatch(ckpt, layout_of(target), extra, model, modes)
        if problem:
            snapshot.restore()
            raise CheckpointError(problem)
    return target


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, and whether it is intact (for ``modeopt inspect``)."""

    path: str
    intact: bool
    #: one line saying what is wrong when not intact
    diagnosis: str | None = None
    format_version: int | None = None
    library_version: str | None = None
    model_class: str | None = None
    #: the applied modes in order, each as (name, config)
    modes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: mode name -> (distribution, version) that provided it at save time
    plugin_versions: dict[str, tuple[str, str]] = field(default_factory=dict)
    num_tensors: int = 0
    num_aliases: int = 0
    tensor_bytes: int = 0
    file_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields."""
        out = asdict(self)
        out["modes"] = [{"name": n, "config": c} for n, c in self.modes]
        out["plugin_versions"] = {k: list(v) for k, v in self.plugin_versions.items()}
        return out


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe the checkpoint at ``path`` without loading weights or needing its modes' plugins.

    Damage is reported in ``intact``/``diagnosis`` rather than raised.

    Raises:
        CheckpointError: only if ``path`` does not exist or is not a file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    base: dict[str, Any] = {"path": str(p), "file_bytes": p.stat().st_size}
    try:
        header = read_header(p)
        base["format_version"] = check_format(header, FORMAT_NAME, FORMAT_VERSION, hint=_FOREIGN_HINT)
        base.update(
            library_version=header.metadata.get("library_version"),
            model_class=header.metadata.get("model_class"),
            num_tensors=len(header.tensors),
            tensor_bytes=header.data_bytes,
        )
        ckpt = _read(p, verify=False)
        base.update(num_aliases=len(ckpt.aliases), plugin_versions=dict(ckpt.providers))

        with TensorReader(header, ckpt.aliases) as reader:
            state, _ = _decode_state(ckpt, reader)
        base["modes"] = [(e.get("name", "?"), e.get("config") or {}) for e in state["modes"] if isinstance(e, dict)]
        verify_digest(header)
    except CheckpointError as exc:
        return CheckpointInfo(intact=False, diagnosis=str(exc).replace("\n", " "), **base)
    return CheckpointInfo(intact=True, **base)
