"""Export: turn every dynamic module of a model into a plain module of its original class."""

from __future__ import annotations

from torch import nn

from .dynamic import DynamicBlock, DynamicModule

__all__ = ["export_model"]


def export_model(model: nn.Module) -> nn.Module:
    """Export ``model`` in place at its active subnet and return it.

    Each dynamic module gets its original class back, parameters and buffers become clones of their
    active slices (untouched ones are kept as they are), subnet attributes become plain ints and tuples,
    and sequentials lose their dropped children (visited top-down, so dropped blocks are never exported).
    """
    tied: dict[int, list[nn.Parameter]] = {}  # tied parameters stay tied (e.g. lm_head and the embedding)
    stack = [model]
    while stack:
        module = stack.pop()
        _drop_blocks(module)
        if isinstance(module, DynamicModule):
            module._dyn_export(tied)
        stack.extend(reversed(list(module.children())))
    return model


def _drop_blocks(container: nn.Module) -> None:
    """Remove the dropped blocks of a block list; an ``nn.ModuleList`` (indexed by position) and an
    ``nn.Sequential`` with positional keys are renumbered, so ``layers[i]`` is the ``i``-th kept block."""
    children = container._modules
    dropped = [k for k, m in children.items() if isinstance(m, DynamicBlock) and not m.kept]
    if not dropped:
        return
    kept = [(k, m) for k, m in children.items() if k not in dropped]
    positional = all(k.isdigit() for k in children)
    children.clear()
    for i, (key, module) in enumerate(kept):
        children[str(i) if positional else key] = module
