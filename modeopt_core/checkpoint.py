"""Model checkpoints: weights plus the applied modes in one safetensors file; no pickle, no code on load.

``save(model, path)`` writes the model's ``state_dict`` tensors, the tensors held in the modes'
metadata, and the mode state as JSON in the header, atomically and in one sequential pass.
``restore(model, path)`` reads one open file (header, digest and tensors from one memory map, so a
concurrent save cannot mix two files into one restore), checks the whole file and its fit with
``model`` before it touches ``model``, then re-applies the modes and loads the weights tensor by
tensor. See ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ._args import require_module, require_path
from ._ckpt_reading import (
    EXTRA_PREFIX,
    STATE_PREFIX,
    Checkpoint,
    decode_state,
    mismatch,
    mode_names,
    read_checkpoint,
    validate_state,
)
from ._codec import RESERVED_PREFIX, encode, to_json
from ._container import VERSION_KEY, check_format, prepare_tensors
from ._model_io import layout_of, load_weights, meta_shadow, model_tensors
from ._rank0_write import write_on_main
from ._reader import ContainerFile
from ._rollback import ModuleSnapshot
from ._writer import write_container
from .conversion import applied_modes, modeopt_state, restore_from_modeopt_state
from .errors import ArgumentError, CheckpointError, ConvertError, ModeNotFoundError, ModeoptError
from .registry import get_mode, mode_provider
from .state import _set_state, unwrap_model

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CheckpointInfo", "inspect_checkpoint", "restore", "save"]

_log = logging.getLogger(__name__)

FORMAT_NAME = "modeopt"
FORMAT_VERSION = 1
_FOREIGN_HINT = (
    "modeopt restore() reads files written by modeopt save(); for plain safetensors weights use "
    "safetensors.torch.load_file() and model.load_state_dict()"
)
_SHOW = 5


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _provider(name: str) -> tuple[str, str]:
    try:
        return mode_provider(name)
    except ModeNotFoundError:  # its plugin was unregistered after the mode was applied
        return ("<unknown>", "")


def save(model: nn.Module, path: str | os.PathLike[str], *, durable: bool = False) -> None:
    """Save weights and applied modes of ``model`` to ``path`` atomically (DP/DDP wrappers are unwrapped).

    Readers of ``path`` see the previous file or the complete new one, also if this process is
    killed mid-save. ``durable=True`` also flushes the file to the disk before returning (``fsync``),
    so that it survives a power loss or kernel crash on any file system; by default the flush is
    left to the kernel, as ``torch.save`` does.

    Under ``torch.distributed``, rank 0 writes and never waits for the other ranks, so
    ``if rank == 0: save(...)`` works; a call on another rank writes nothing and returns once rank 0's
    matching save of the same path is complete (see ``docs/distributed.md``).

    Raises:
        ArgumentError: ``model`` is not a module or ``path`` not a path.
        CheckpointError: the state holds values that cannot be stored (the message says where), or
            the file cannot be written; an existing ``path`` is then left as it was. Other ranks then
            raise :class:`~modeopt_core.distributed.DistributedError` naming rank 0's error.
    """
    require_module(model, "save")
    text = require_path(path, "save")
    if not isinstance(durable, bool):
        raise ArgumentError(f"save() argument 'durable' must be True or False, got {durable!r}")
    model = unwrap_model(model)
    write_on_main(text, lambda: _write(model, text, durable))


def _write(model: nn.Module, path: str, durable: bool) -> None:
    from . import __version__

    state = modeopt_state(model)
    providers = {entry["name"]: list(_provider(entry["name"])) for entry in state["modes"]}
    weights, extra, versions = model_tensors(model)
    reserved = [k for k in [*weights, *extra] if k.startswith(RESERVED_PREFIX)]
    if reserved:
        raise CheckpointError(f"state_dict keys {reserved[:_SHOW]} use the reserved prefix {RESERVED_PREFIX!r}; rename them")
    state_tree, state_tensors = encode(state, prefix=STATE_PREFIX)
    extra_tree, extra_tensors = encode(extra, prefix=EXTRA_PREFIX)
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
    write_container(path, stored, metadata, durable=durable)
    _log.info("saved %s: %d tensors (%d aliases), modes %s", path, len(stored), len(aliases), applied_modes(model))


def restore(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Restore modes and weights from ``path`` onto a freshly built ``model``; return the restored model.

    Everything is validated first (file integrity, format version, every header table, every mode
    available, configs and chain valid, tensor names, kinds and shapes equal to what the model has
    once its modes are restored); on any problem a :class:`CheckpointError` is raised and ``model``
    is unchanged. The whole restore reads one open file: a save replacing ``path`` meanwhile is
    either not seen at all or seen complete.

    Raises:
        ArgumentError: ``model`` is not a module or ``path`` not a path.
        CheckpointError: the file is missing, damaged, foreign, or does not fit ``model``.
    """
    require_module(model, "restore")
    text = require_path(path, "restore")
    model = unwrap_model(model)
    with ContainerFile(text) as f:
        check_format(f.header, FORMAT_NAME, FORMAT_VERSION, hint=_FOREIGN_HINT)
        ckpt = read_checkpoint(f)
        if applied_modes(model):
            raise CheckpointError(
                f"{ckpt.path}: restore() needs a freshly built model, but this one already has modes "
                f"{applied_modes(model)}"
            )
        state, extra = decode_state(ckpt, f.reader(ckpt.aliases, own=True))
        validate_state(ckpt, state)
        modes = mode_names(state)
        snapshot = ModuleSnapshot(model)
        target = _restore_modes(model, state, ckpt, extra, modes)
        try:
            layout = layout_of(target)
            load_weights(target, f.reader(ckpt.aliases), extra, ckpt.versions, bounded=layout.bounded)
            f.check_unchanged()
        except BaseException as exc:
            snapshot.restore()
            _set_state(model, None)
            if isinstance(exc, CheckpointError):
                text = str(exc) if str(exc).startswith(ckpt.path) else f"{ckpt.path}: {exc}"
                raise CheckpointError(
                    f"{text}. The model's modes and structure were rolled back, but tensors already copied keep "
                    "the file's values: build the model afresh before using it"
                ) from exc
            raise
    _log.info("restored %s: modes %s, %d tensors", ckpt.path, modes, len(layout.shapes))
    return target


def _restore_modes(model: nn.Module, state: dict[str, Any], ckpt: Checkpoint, extra: dict[str, Any],
                   modes: list[str]) -> nn.Module:
    """Check the fit on a data-less shadow, then re-apply the modes on ``model`` itself."""
    path = ckpt.path
    if not modes:
        problem = mismatch(ckpt, layout_of(model), extra, model, modes)
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
        problem = mismatch(ckpt, layout_of(shadow), extra, model, modes)
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
        problem = mismatch(ckpt, layout_of(target), extra, model, modes)
        if problem:
            snapshot.restore()
            _set_state(model, None)
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


def _informative(value: str | None, limit: int = 200) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 3] + "..."


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe the checkpoint at ``path`` without loading weights or needing its modes' plugins.

    Damage is reported in ``intact``/``diagnosis`` rather than raised.

    Raises:
        ArgumentError: ``path`` is not a path.
        CheckpointError: only if ``path`` does not exist or is not a file.
    """
    p = Path(require_path(path, "inspect_checkpoint"))
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    base: dict[str, Any] = {"path": str(p), "file_bytes": p.stat().st_size}
    try:
        with ContainerFile(p) as f:
            header = f.header
            base["file_bytes"] = header.file_size
            base["format_version"] = check_format(header, FORMAT_NAME, FORMAT_VERSION, hint=_FOREIGN_HINT)
            base.update(
                library_version=_informative(header.metadata.get("library_version")),
                model_class=_informative(header.metadata.get("model_class")),
                num_tensors=len(header.tensors),
                tensor_bytes=header.data_bytes,
            )
            ckpt = read_checkpoint(f, verify=False)
            base.update(num_aliases=len(ckpt.aliases), plugin_versions=dict(ckpt.providers))
            state, _ = decode_state(ckpt, f.reader(ckpt.aliases, own=True))
            base["modes"] = [(e["name"], e.get("config") or {}) for e in state["modes"]]
            f.verify_digest()
    except CheckpointError as exc:
        return CheckpointInfo(intact=False, diagnosis=str(exc).replace("\n", " "), **base)
    except Exception as exc:  # inspect reports damage, it never raises on a file's content
        _log.debug("unexpected error inspecting %s", p, exc_info=True)
        return CheckpointInfo(intact=False, diagnosis=f"{p}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                                                      "this is a modeopt bug, please report it", **base)
    return CheckpointInfo(intact=True, **base)
