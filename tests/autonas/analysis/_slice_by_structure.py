"""Physically shrink a plain model as a ``SpaceStructure`` says, to check the analysis' ties.

Independent of the dynamic modules: every searchable group gets a random smaller width, every
binding's dimension keeps the first ``k`` channels of each of its segments (``k * repeat`` features
for flattened segments), and the module's weights, biases, running stats and size attributes are
replaced accordingly. If the analysis tied channels wrongly (or missed a tie), the forward pass of
the shrunk model fails with a shape error. Attention layers become the classes an export gives when
their heads no longer fill their width (``PrunedMultiheadAttention``, ``PrunedShiftedWindowAttention``).
"""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict

import torch
from torch import nn

from modeopt_autonas.space.dynamic import PrunedMultiheadAttention
from modeopt_autonas.space.dynamic.window_attention import pruned_window_attention
from modeopt_autonas.space.layers import LAYERS
from modeopt_autonas.space.structure import TENSOR_ROLE_PREFIX, Binding, SpaceStructure


def pick_widths(model: nn.Module, structure: SpaceStructure, rng: random.Random) -> dict[int, int]:
    """A random width per searchable group: a multiple of every member's ``multiple_of``, and
    (where possible) smaller than the original and different from the other groups' widths."""
    modules = dict(model.named_modules())
    multiple: dict[int, int] = defaultdict(lambda: 1)
    for b in structure.bindings:
        spec = LAYERS.spec(modules[b.module], verified=True)
        if spec is not None:
            for seg in b.segments:
                multiple[seg.group] = math.lcm(multiple[seg.group], spec.multiple_of)
    widths: dict[int, int] = {}
    used: set[int] = set()
    for g in structure.groups:
        if not g.searchable:
            continue
        m = multiple[g.id]
        options = [k for k in range(m, g.size, m)] or [g.size]
        fresh = [k for k in options if k not in used] or options
        widths[g.id] = rng.choice(fresh)
        used.add(widths[g.id])
    return widths


def _indices(binding: Binding, structure: SpaceStructure, widths: dict[int, int]) -> torch.Tensor:
    sizes = {g.id: g.size for g in structure.groups}
    keep: list[torch.Tensor] = []
    offset = 0
    for seg in binding.segments:
        k = widths.get(seg.group, sizes[seg.group])
        keep.append(offset + torch.arange(k * seg.repeat))
        offset += sizes[seg.group] * seg.repeat
    return torch.cat(keep)


def _take(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.detach().index_select(dim, idx).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is not None:
        setattr(module, name, nn.Parameter(value))


def _slice_tensor(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    t = module._parameters.get(name)
    if t is not None:
        module._parameters[name] = nn.Parameter(_take(t, dim, idx))
    elif module._buffers.get(name) is not None:
        module._buffers[name] = _take(module._buffers[name], dim, idx)


def _slice_module(module: nn.Module, dims: dict[str, torch.Tensor], tensors: dict[str, tuple]) -> None:
    for role, entries in tensors.items():  # tensor roles and a layer role's extra tensors
        for name, dim in entries:
            _slice_tensor(module, name, dim, dims[role])
    dims = {role: idx for role, idx in dims.items() if not role.startswith(TENSOR_ROLE_PREFIX)}
    if not dims:
        return
    if isinstance(module, nn.modules.conv._ConvNd):
        transposed = module.transposed
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        if module.groups == 1:
            if "out" in dims:
                _set_param(module, "weight", _take(module.weight, out_dim, dims["out"]))
                _set_param(module, "bias", _take(module.bias, 0, dims["out"]))
                module.out_channels = len(dims["out"])
            if "in" in dims:
                _set_param(module, "weight", _take(module.weight, in_dim, dims["in"]))
                module.in_channels = len(dims["in"])
        elif module.in_channels != module.out_channels:  # frozen grouped conv: must stay whole
            assert len(dims["in"]) == module.in_channels and len(dims["out"]) == module.out_channels, (
                "a grouped conv with in_channels != out_channels was shrunk"
            )
        else:  # grouped conv with in == out: one index set for both, the group size stays
            idx = dims["out"]
            assert torch.equal(idx, dims["in"]), "grouped conv bound to different in/out channels"
            per_group = module.in_channels // module.groups
            _set_param(module, "weight", _take(module.weight, 0, idx))
            _set_param(module, "bias", _take(module.bias, 0, idx))
            module.in_channels = module.out_channels = len(idx)
            module.groups = len(idx) // per_group
    elif isinstance(module, nn.Linear):
        if "out" in dims:
            _set_param(module, "weight", _take(module.weight, 0, dims["out"]))
            _set_param(module, "bias", _take(module.bias, 0, dims["out"]))
            module.out_features = len(dims["out"])
        if "in" in dims:
            _set_param(module, "weight", _take(module.weight, 1, dims["in"]))
            module.in_features = len(dims["in"])
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        idx = dims["features"]
        _set_param(module, "weight", _take(module.weight, 0, idx))
        _set_param(module, "bias", _take(module.bias, 0, idx))
        for buf in ("running_mean", "running_var"):
            if getattr(module, buf, None) is not None:
                setattr(module, buf, _take(getattr(module, buf), 0, idx))
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (len(idx),)
        elif isinstance(module, nn.GroupNorm):
            per_group = module.num_channels // module.num_groups
            module.num_channels = len(idx)
            module.num_groups = len(idx) // per_group
        else:
            module.num_features = len(idx)
    elif isinstance(module, nn.MultiheadAttention):
        _slice_attention(module, dims)
    elif type(module).__name__ == "ShiftedWindowAttention":  # torchvision's Swin: heads only (its own tensors)
        _slice_tensor(module, "relative_position_bias_table", 1, dims["heads"])
        module.num_heads = len(dims["heads"])
        module.__class__ = pruned_window_attention(type(module))  # head_dim: set before any slicing
    else:
        raise TypeError(f"test slicer does not know how to slice {type(module).__name__}")


def _slice_attention(module: nn.MultiheadAttention, dims: dict[str, torch.Tensor]) -> None:
    """An ``nn.MultiheadAttention`` by its roles, made a ``PrunedMultiheadAttention`` (which runs any heads)."""
    packed = module._qkv_same_embed_dim
    for role, entries in {
        "in": [("in_proj_weight" if packed else "q_proj_weight", 1)],
        "key": [("k_proj_weight", 1)],
        "value": [("v_proj_weight", 1)],
        "qkv": [("in_proj_weight", 0), ("in_proj_bias", 0)] if packed else [("in_proj_bias", 0)],
        "heads": [("bias_k", 2), ("bias_v", 2)] + ([] if packed else [(f"{x}_proj_weight", 0) for x in "qkv"]),
    }.items():
        for name, dim in entries if role in dims else ():
            _slice_tensor(module, name, dim, dims[role])
    head_dim = module.head_dim
    if "in" in dims:
        module.embed_dim = len(dims["in"])
    module.kdim = module.embed_dim if packed else len(dims.get("key", torch.empty(module.kdim)))
    module.vdim = module.embed_dim if packed else len(dims.get("value", torch.empty(module.vdim)))
    if "heads" in dims:
        module.num_heads = len(dims["heads"]) // head_dim
    module.__class__ = PrunedMultiheadAttention.of(type(module))
    module.head_dim = head_dim


def slice_by_structure(model: nn.Module, structure: SpaceStructure, widths: dict[int, int]) -> nn.Module:
    """A shrunk deep copy of ``model``."""
    shrunk = copy.deepcopy(model)
    modules = dict(shrunk.named_modules())
    for m in modules.values():  # before qkv is sliced: the head size of every window attention
        if type(m).__name__ == "ShiftedWindowAttention":
            m.head_dim = m.qkv.out_features // 3 // m.num_heads
    per_module: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    tensors: dict[str, dict[str, tuple]] = defaultdict(dict)
    for b in structure.bindings:
        per_module[b.module][b.role] = _indices(b, structure, widths)
        if b.tensors:
            tensors[b.module][b.role] = b.tensors
    for name, dims in per_module.items():
        _slice_module(modules[name], dims, tensors[name])
    return shrunk


def check_slicing(
    model: nn.Module, structure: SpaceStructure, x: torch.Tensor, *, seed: int = 0, rounds: int = 2
) -> list[dict[int, int]]:
    """Shrink ``model`` ``rounds`` times with random widths and run it on ``x``; the output shapes must
    not change (model outputs are frozen). Returns the widths used."""
    model = model.eval()
    with torch.no_grad():
        reference = model(x)
    rng = random.Random(seed)
    used = []
    for _ in range(rounds):
        widths = pick_widths(model, structure, rng)
        shrunk = slice_by_structure(model, structure, widths)
        with torch.no_grad():
            out = shrunk(x)
        assert _shapes(out) == _shapes(reference), "shrinking changed the model's output shape"
        used.append(widths)
    return used


def _shapes(out: object) -> object:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return [_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    return out
