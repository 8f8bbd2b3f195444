"""Where a teacher comes from, what the checkpoint records about it, and the checks it must pass."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable
from typing import Any

from torch import nn

from modeopt_core import ConfigError
from modeopt_core.sdk import load_object

from .config import KDLossConfig
from .errors import LayerNotFoundError, TeacherMismatchError

__all__ = ["build_teacher", "check_layer_names", "check_same_teacher", "describe_teacher", "load_factory"]


def load_factory(reference: str) -> Any:
    """``"package.module:attr.path"`` -> the callable it names (imports the module: runs its code)."""
    return load_object(reference, "teacher factory", callable_hint=" (a function returning the teacher is needed)")


def build_teacher(source: Any, what: str) -> nn.Module:
    """A teacher from a module, a zero-argument callable or a factory reference string."""
    if isinstance(source, str):
        source = load_factory(source)
    if not isinstance(source, nn.Module) and callable(source):
        try:
            source = source()
        except Exception as exc:
            raise ConfigError(f"{what} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(source, nn.Module):
        raise ConfigError(f"{what} must be (or return) a torch.nn.Module, got {type(source).__name__}")
    return source


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _fingerprint(teacher: nn.Module) -> str:
    """A digest of the teacher's tensor names, shapes and dtypes (its architecture, not its values)."""
    digest = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def describe_teacher(config: KDLossConfig, teacher: nn.Module | None) -> dict[str, Any]:
    """What the checkpoint records about the teacher: where it came from and its architecture."""
    if config.teacher_subnet is not None:
        return {"source": "subnet", "subnet": config.teacher_subnet}
    assert teacher is not None
    return {
        "source": "factory" if config.teacher is not None else "module",
        "factory": config.teacher,
        "class": _class_name(teacher),
        "fingerprint": _fingerprint(teacher),
        "num_params": sum(p.numel() for p in teacher.parameters()),
    }


def check_same_teacher(recorded: dict[str, Any], teacher: nn.Module) -> None:
    """Raise :class:`TeacherMismatchError` unless ``teacher`` has the recorded class and architecture."""
    found = {"class": _class_name(teacher), "fingerprint": _fingerprint(teacher)}
    if recorded.get("class") != found["class"] or recorded.get("fingerprint") != found["fingerprint"]:
        raise TeacherMismatchError(
            f"this teacher is a {found['class']} (architecture {found['fingerprint']}), but the model was distilled "
            f"from a {recorded.get('class')} (architecture {recorded.get('fingerprint')}); attach the same teacher "
            "or pass strict=False to distil from a different one"
        )


def check_layer_names(model: nn.Module, names: Iterable[tuple[str, str]], role: str) -> None:
    """Raise :class:`LayerNotFoundError` for the first ``(field, name)`` that is not a module of ``model``."""
    known = dict(model.named_modules())
    for field, name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, [n for n in known if n], n=3)
        hint = f" Close names: {close}." if close else ""
        raise LayerNotFoundError(
            f"{field}: the {role} has no module {name!r}.{hint} Use a name from {role}.named_modules() "
            "('' is the model itself, i.e. its output)"
        )
