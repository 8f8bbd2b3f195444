"""Cheap structural snapshots of a module tree, to undo a failed convert or restore.

Why not ``copy.deepcopy``: that would double the model's memory. Modes change a model by swapping
classes, replacing submodules and parameters, and setting attributes; a shallow copy of every module's
``__dict__`` (and its parameter/buffer/submodule dicts) captures all of that without copying tensor
data. In-place edits of tensor data are not undone (the ``ModeDescriptor.convert`` contract forbids them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

_DICT_ATTRS = ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks",
               "_backward_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks", "_non_persistent_buffers_set")


class ModuleSnapshot:
    """Remembers class, attributes and children of every module reachable from a root."""

    def __init__(self, root: nn.Module) -> None:
        self._saved: list[tuple[nn.Module, type, dict[str, Any], dict[str, Any]]] = []
        for module in root.modules():
            inner = {
                k: (v.copy() if hasattr(v, "copy") else v)
                for k in _DICT_ATTRS
                if (v := module.__dict__.get(k)) is not None
            }
            self._saved.append((module, type(module), dict(module.__dict__), inner))

    def restore(self) -> None:
        """Put every remembered module back as it was."""
        for module, cls, attrs, inner in self._saved:
            if type(module) is not cls:
                module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(attrs)
            for key, value in inner.items():
                target = module.__dict__[key]
                if hasattr(target, "clear") and target is not value:
                    target.clear()
                    target.update(value)
