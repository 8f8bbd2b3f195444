"""Importance sorting: physically reorder channels so every subnet keeps the most important ones.

The default importance of a channel group is the L1 norm of each channel's slice of every producing
weight (each producer normalised by its largest channel, then summed). Groups without producers fall
back to their norm layers' affine weights, then to the weights of a composite layer's own dims (the
q/k/v rows of an attention's heads), then to their consumers' input slices. Reordering permutes
every tensor bound to the group (producer outputs, biases, norm parameters and running stats,
consumer inputs, concat segments, flatten repeat blocks) by the same permutation, so the model
computes the same function; the active channels of any subnet are then the first ``k`` (contiguous
slices, no gathers). Sorting is idempotent: channels already in order are left alone.

:func:`activation_importance` scores channels from data instead: at every plain convolution or linear
layer that reads the group, a channel's mean absolute input on the calibration batches times the L1
norm of the weights that read it, i.e. the size of its contribution to that layer's output. A channel
with large weights that the data never drives (dead after a ReLU, a BatchNorm with a negative shift)
then ranks last, where the weight norms rank it first.

:func:`contribution_importance` needs no data: a channel's importance is the scale it leaves its
producers with times the L1 norm of the weights that read it. Behind a per-channel norm
(BatchNorm, InstanceNorm) the producers' scale is divided out, so the scale is the norm's affine
weight; otherwise it is the producers' weight norm times any per-channel scaling on the way
(LayerNorm/RMSNorm weights, depthwise filters). Each factor is the normalised sum over the members
that carry it, as in :func:`channel_importance`. FastNAS ranks by it by default
(``importance="contribution"``); :meth:`SearchSpace.sort_by_importance` without ``scores`` keeps the
weight norms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import SubnetConfigError
from .structure import is_follower

if TYPE_CHECKING:
    from .search_space import SearchSpace

__all__ = [
    "SortLog",
    "activation_importance",
    "channel_importance",
    "contribution_importance",
    "sort_by_importance",
    "undo_sort",
]


def _tensor(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    t = module._parameters.get(name)
    return module._buffers.get(name) if t is None else t


def _weight_norms(space: SearchSpace, members: Sequence[Any]) -> torch.Tensor | None:
    """Sum over ``members`` of each one's per-channel L1 weight norm, normalised by its largest channel
    (None when none of them has a weight for its role)."""
    dynamic = space.dynamic_modules()
    total = None
    for mem in members:
        module = dynamic.get(mem.module)
        if module is None:
            continue
        where = module.dynamic_channel_weight(mem.role)
        t = None if where is None else _tensor(module, where[0])
        if t is None or where is None:
            continue
        dim = where[1] % t.ndim
        seg = t.detach().narrow(dim, mem.offset, mem.size * mem.repeat).abs()
        # float64 accumulation keeps a second sort from flipping near-ties (idempotence)
        score = seg.movedim(dim, 0).reshape(mem.size, -1).sum(1, dtype=torch.float64)
        score = score / (score.max() + 1e-12)
        total = score.cpu() if total is None else total + score.cpu()
    return total


def channel_importance(space: SearchSpace, group_id: int) -> torch.Tensor | None:
    """Per-channel importance of channel group ``group_id`` (float64), or None when nothing scores it."""
    members = space.members(group_id)
    # producers first, then norms, then a composite layer's own dims (attention heads), then consumers
    own = sorted({m.role for m in members if m.role not in ("out", "features", "in") and not is_follower(m.role)})
    for role in ("out", "features", *own, "in"):
        total = _weight_norms(space, [m for m in members if m.role == role])
        if total is not None:
            return total
    return None


_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def contribution_importance(space: SearchSpace, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``{hparam name: per-channel importance (float64)}`` from the weights alone, as the size of each
    channel's contribution to the layers that read it (see the module doc).

    Groups with neither producers, norms nor consumers (e.g. attention heads) are left out: sort
    those by :func:`channel_importance`.
    """
    dynamic = space.dynamic_modules()
    wanted = None if names is None else set(names)
    result: dict[str, torch.Tensor] = {}
    for gid, hp in space._built.group_hparams.items():
        if not hp.is_configurable or not hp.sortable or (wanted is not None and hp.name not in wanted):
            continue
        members = space.members(gid)
        normalising = [m for m in members if isinstance(dynamic.get(m.module), _PER_CHANNEL_NORMS)]
        if normalising:
            # a per-channel norm divides out whatever scale the producers gave a channel: its affine
            # weight is the scale the channel leaves with (all ones for a norm without one)
            upstream = _weight_norms(space, normalising)
            if upstream is None:
                upstream = torch.ones(hp.original, dtype=torch.float64)
        else:  # the producers' scale, times any per-channel scaling on the way (LayerNorm/RMSNorm weights)
            upstream = _product(_weight_norms(space, [m for m in members if m.role == "out"]),
                                _weight_norms(space, [m for m in members if m.role == "features"]))
        score = _product(upstream, _weight_norms(space, [m for m in members if m.role == "in"]))
        if score is not None:
            result[hp.name] = score
    return result


def _product(*factors: torch.Tensor | None) -> torch.Tensor | None:
    """The product of the factors that exist (None when none does)."""
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else out * f
    return out


def _reads_channels_plainly(module: nn.Module) -> bool:
    """A layer whose input feature ``i`` is read by weight column ``i`` alone (``weight[:, i]``)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
            and module.__dict__.get("groups", 1) == 1)


def activation_importance(space: SearchSpace, forward_loop: Callable[[nn.Module], Any],
                          names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``{hparam name: per-channel importance (float64)}`` from data (see the module doc).

    ``forward_loop(model)`` runs the calibration batches through the model (eval mode, no grad; the
    training flags are put back). Groups that no plain conv/linear layer reads are left out: sort
    those by their weights.
    """
    model = space.model
    dynamic = space.dynamic_modules()
    wanted = None if names is None else set(names)
    targets = {gid: hp for gid, hp in space._built.group_hparams.items()
               if hp.is_configurable and hp.sortable and (wanted is None or hp.name in wanted)}
    readers = {mem.module for gid in targets for mem in space.members(gid)
               if mem.role == "in" and mem.module in dynamic and _reads_channels_plainly(dynamic[mem.module])}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(module_name: str, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0].detach()
        dim = x.ndim - 1 if isinstance(module, nn.Linear) else 1
        mean = x.abs().movedim(dim, 0).reshape(x.shape[dim], -1).mean(1, dtype=torch.float64)
        sums[module_name] = sums[module_name] + mean if module_name in sums else mean
        counts[module_name] = counts.get(module_name, 0) + 1

    handles = [dynamic[n].register_forward_pre_hook(lambda m, i, n=n: record(n, m, i)) for n in sorted(readers)]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            forward_loop(model)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    result: dict[str, torch.Tensor] = {}
    for gid, hp in targets.items():
        total = None
        for mem in space.members(gid):
            if mem.role != "in" or mem.module not in sums:
                continue
            module = dynamic[mem.module]
            width = mem.size * mem.repeat
            drive = (sums[mem.module] / counts[mem.module]).narrow(0, mem.offset, width)
            weight = _tensor(module, "weight")
            assert weight is not None
            reads = weight.detach().narrow(1, mem.offset, width).abs().movedim(1, 0).reshape(width, -1)
            score = (drive.cpu() * reads.sum(1, dtype=torch.float64).cpu()).reshape(mem.size, mem.repeat).sum(1)
            score = score / (score.max() + 1e-12)
            total = score if total is None else total + score
        if total is not None:
            result[hp.name] = total
    return result


def _permute_group(space: SearchSpace, group_id: int, perm: torch.Tensor) -> None:
    dynamic = space.dynamic_modules()
    done: set[tuple[int, int, int]] = set()  # (storage, dim, offset): a tensor tied between modules moves once
    for mem in space.members(group_id):
        module = dynamic[mem.module]
        block = (perm[:, None] * mem.repeat + torch.arange(mem.repeat)).reshape(-1) + mem.offset
        for name, dim in module.__dict__["_dyn_layout_map"].get(mem.role, ()):  # attr roles hold no tensor
            t = _tensor(module, name)
            if t is None:
                continue
            dim %= t.ndim
            key = (t.untyped_storage().data_ptr(), dim, mem.offset)
            if key in done:
                continue
            done.add(key)
            index = torch.arange(t.shape[dim])
            index[mem.offset : mem.offset + block.numel()] = block
            with torch.no_grad():
                t.copy_(t.index_select(dim, index.to(t.device)))


#: what :func:`sort_by_importance` changed, for :func:`undo_sort`: (group id, permutation, previous importance)
SortLog = list[tuple[int, torch.Tensor, "torch.Tensor | None"]]


def sort_by_importance(
    space: SearchSpace, names: list[str] | None = None, *, log: SortLog | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Sort the channels of every configurable, sortable channel group (or only those in ``names``).

    Returns ``{hparam name: importance in the new order}`` for the groups that were scored. With
    ``log``, every change is appended to it, so that :func:`undo_sort` can put the weights back bit
    for bit (a failed search must leave the model as it found it). ``scores`` (e.g. from
    :func:`activation_importance`, in the current channel order) replace the weight norms of the
    hparams they name.
    """
    if names is not None:
        known = {n for n, _ in space.named_hparams(None)}
        unknown = sorted(set(names) - known)
        if unknown:
            raise SubnetConfigError(f"cannot sort unknown hparams {unknown}; known: {sorted(known)}")
    wanted = None if names is None else set(names)
    result: dict[str, torch.Tensor] = {}
    for gid, hp in space._built.group_hparams.items():
        if not hp.is_configurable or not hp.sortable or (wanted is not None and hp.name not in wanted):
            continue
        given = None if scores is None else scores.get(hp.name)
        if given is not None and tuple(given.shape) != (hp.original,):
            raise SubnetConfigError(f"importance of {hp.name!r} has shape {tuple(given.shape)}; expected "
                                    f"({hp.original},): one score per channel")
        importance = given.to(torch.float64).cpu() if given is not None else channel_importance(space, gid)
        if importance is None:
            continue
        perm = torch.argsort(importance, descending=True, stable=True)
        if log is not None:
            log.append((gid, perm, hp.importance))
        if not torch.equal(perm, torch.arange(perm.numel())):
            _permute_group(space, gid, perm)
        hp.importance = importance[perm]
        result[hp.name] = hp.importance
    return result


def undo_sort(space: SearchSpace, log: SortLog) -> None:
    """Undo the sorts recorded in ``log`` (newest first): every permuted tensor is exactly as before."""
    for gid, perm, importance in reversed(log):
        if not torch.equal(perm, torch.arange(perm.numel())):
            _permute_group(space, gid, torch.argsort(perm))
        space._built.group_hparams[gid].importance = importance
    log.clear()
