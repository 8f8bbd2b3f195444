"""``nn.MultiheadAttention`` in the search space: searchable heads and embedding (stream) width.

The layer's flow (its :class:`~..layers.LayerSpec`): the query (and, with packed weights, key and value)
channels are the columns of ``in_proj_weight`` (role ``"in"``; separate ``kdim``/``vdim`` weights: roles
``"key"``/``"value"``); the heads are an internal dim of ``head_dim`` features per channel: the rows of
each of q, k and v in ``in_proj_weight``/``in_proj_bias`` (role ``"qkv"``, three pieces), the rows of
separate q/k/v weights and the last dim of ``bias_k``/``bias_v`` (role ``"heads"``) and the columns of
``out_proj`` (its role ``"in"``); the output is ``out_proj``'s rows (its role ``"out"``). ``head_dim``
never changes, so heads are whole units: sliced and sorted by importance together in q, k, v and
``out_proj``.

``F.multi_head_attention_forward`` needs ``num_heads * head_dim == embed_dim``: the dynamic module runs
torch's own forward (and its fused fast path) whenever the subnet keeps that, and
:func:`._mha_forward.multi_head_attention` otherwise. A plain ``nn.MultiheadAttention`` cannot hold fewer
heads than its width (its ``embed_dim`` is the query, inner and output width at once), so such a subnet
exports to :class:`PrunedMultiheadAttention`, a subclass (``isinstance`` holds, the state-dict keys are
the same) whose ``embed_dim``, ``kdim``, ``vdim``, ``num_heads`` and ``head_dim`` describe it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import InternalDim, LayerCall, LayerSpec
from ._mha_forward import multi_head_attention
from .base import DimBinding, DynamicModule, FlopsTerm, attr_view, param_view

__all__ = ["DynamicMultiheadAttention", "PrunedMultiheadAttention", "mha_spec"]


def _check_call(call: LayerCall) -> str:
    """Calls whose heads cannot change: a mask or weights with one entry per head."""
    if "attn_mask" in call.shapes:
        shape = call.shapes["attn_mask"]
        if shape is None:
            return "an attn_mask of unknown shape may hold one mask per head (analyze with an example input)"
        if len(shape) == 3:
            return "its 3-D attn_mask holds one mask per head (batch x num_heads masks)"
    if 1 in call.used_items and call.literals.get("need_weights", True) is not False:
        if call.literals.get("average_attn_weights", True) is not True:
            return "its attention weights per head (average_attn_weights=False) are used"
    return ""


def mha_spec(m: nn.Module) -> LayerSpec:
    """The flow of an ``nn.MultiheadAttention`` (see the module doc)."""
    assert isinstance(m, nn.MultiheadAttention)
    same = bool(m._qkv_same_embed_dim)
    key, value = ("in", "in") if same else ("key", "value")
    widths = [("in", m.embed_dim), ("out_proj.out", m.out_proj.out_features)]
    if not same:
        widths += [("key", m.kdim), ("value", m.vdim)]
    heads = InternalDim(m.num_heads, (("qkv", 3, m.head_dim), ("heads", 1, m.head_dim), ("out_proj.in", 1, m.head_dim)))
    return LayerSpec(
        "producer", -1, -1,
        inputs=(("query", "in"), ("key", key), ("value", value)),
        output="out_proj.out",
        widths=tuple(widths),
        internal=(heads,),
        tuple_output=(0, 2),
        check_call=_check_call,
        fused_parents=(nn.TransformerEncoderLayer,),
    )


def _tokens(t: torch.Tensor) -> int:
    return t.numel() // t.shape[-1] if t.dim() else 0


def _weight_factors(layer: nn.Module) -> list[int | DimBinding | Any]:
    weight = layer._parameters["weight"]
    assert weight is not None
    if isinstance(layer, DynamicModule):
        return list(layer._dyn_tensor_factors("weight", weight.shape))
    return list(weight.shape)


class DynamicMultiheadAttention(DynamicModule, nn.MultiheadAttention):
    """Dynamic ``nn.MultiheadAttention`` (see the module doc for its roles)."""

    dynamic_roles = {"in": "embed_dim", "key": "kdim", "value": "vdim", "qkv": "num_heads", "heads": "num_heads"}
    dynamic_flops_tensor = None  # see dynamic_flops_terms

    in_proj_weight = param_view("in_proj_weight")
    in_proj_bias = param_view("in_proj_bias")
    q_proj_weight = param_view("q_proj_weight")
    k_proj_weight = param_view("k_proj_weight")
    v_proj_weight = param_view("v_proj_weight")
    # bias_k / bias_v: parameters only with add_bias_kv (plain None attributes otherwise), so their views
    # are added per instance by ``convert`` from the layout
    embed_dim = attr_view("embed_dim")
    kdim = attr_view("kdim")
    vdim = attr_view("vdim")
    num_heads = attr_view("num_heads")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        widths = {"in": module.embed_dim, "key": module.kdim, "value": module.vdim, "qkv": 3 * module.embed_dim,
                  "heads": module.embed_dim}
        return int(widths[role])

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        bias_kv = (("bias_k", 2), ("bias_v", 2))
        if module._qkv_same_embed_dim:
            return {"in": (("in_proj_weight", 1),), "qkv": (("in_proj_weight", 0), ("in_proj_bias", 0)),
                    "heads": bias_kv}
        return {"in": (("q_proj_weight", 1),), "key": (("k_proj_weight", 1),), "value": (("v_proj_weight", 1),),
                "qkv": (("in_proj_bias", 0),),
                "heads": (("q_proj_weight", 0), ("k_proj_weight", 0), ("v_proj_weight", 0), *bias_kv)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        same = self._qkv_same_embed_dim
        return {"in": ("in_proj_weight" if same else "q_proj_weight", 1), "key": ("k_proj_weight", 1),
                "value": ("v_proj_weight", 1), "qkv": ("in_proj_weight", 0) if same else None,
                "heads": None if same else ("q_proj_weight", 0)}.get(role)

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        embed = widths.get("in", self.dynamic_original("embed_dim"))
        inner = widths["heads"] if "heads" in widths else widths.get("qkv", 3 * self.dynamic_original("embed_dim")) // 3
        same = self._qkv_same_embed_dim
        return {
            "embed_dim": embed,
            "kdim": embed if same else widths.get("key", self.dynamic_original("kdim")),
            "vdim": embed if same else widths.get("value", self.dynamic_original("vdim")),
            "num_heads": inner // self.head_dim,
        }

    def _dyn_plain(self) -> bool:
        """Whether the active subnet is an ordinary ``nn.MultiheadAttention`` (torch's forward can run it)."""
        return self.num_heads * self.head_dim == self.embed_dim == self.out_proj.out_features

    def dynamic_export_class(self, attrs: dict[str, Any]) -> type[nn.Module]:
        original = self.__dict__["_dyn_original_cls"]
        plain = attrs["num_heads"] * self.head_dim == attrs["embed_dim"] == self.out_proj.out_features
        return original if plain else PrunedMultiheadAttention.of(original)

    def dynamic_flops_terms(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FlopsTerm] | None:
        names = ("query", "key", "value")
        query, key, value = (args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names))
        if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)):
            return None
        inner = self.num_heads * self.head_dim
        heads = self._dyn_factor("heads", inner)
        tq, tk = _tokens(query), _tokens(key)
        extra = int(self.bias_k is not None) + int(bool(self.add_zero_attn))
        source = (key.shape[0] if key.dim() == 2 else key.shape[1] if self.batch_first else key.shape[0]) + extra
        same = self._qkv_same_embed_dim
        out_proj = self.out_proj._parameters["weight"]
        assert out_proj is not None
        return [
            (2 * tq * query.shape[-1] * inner, [2 * tq, self._dyn_factor("in", query.shape[-1]), heads]),
            (2 * tk * key.shape[-1] * inner, [2 * tk, self._dyn_factor("in" if same else "key", key.shape[-1]), heads]),
            (2 * tk * value.shape[-1] * inner, [2 * tk, self._dyn_factor("in" if same else "value", value.shape[-1]), heads]),
            (4 * tq * source * inner, [4 * tq * source, heads]),  # q @ k^T and weights @ v, per head
            (2 * tq * out_proj.numel(), [2 * tq, *_weight_factors(self.out_proj)]),
        ]

    def _dyn_factor(self, role: str, full: int) -> int | DimBinding:
        """A role's binding as a FLOPs factor (its full width when the role is not bound)."""
        binding = self.__dict__["_dyn_dims"].get(role)
        return full if binding is None else binding

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._dyn_plain():
            return super().forward(query, key, value, *args, **kwargs)
        return multi_head_attention(self, query, key, value, *args, **kwargs)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose heads do not fill its embedding width (an exported subnet).

    ``embed_dim`` is the query width (the columns of ``in_proj_weight``), ``kdim``/``vdim`` the key and
    value widths, ``num_heads`` heads of ``head_dim`` features make the inner width (the rows of each of
    q, k and v, the columns of ``out_proj``), and ``out_proj.out_features`` is the output width. The
    parameters and their names are those of ``nn.MultiheadAttention``; only their shapes differ. Its
    forward takes the arguments of ``nn.MultiheadAttention.forward`` (torch's fused fast path does not
    apply: it assumes ``num_heads * head_dim == embed_dim``).
    """

    _subclasses: dict[type[nn.Module], type[nn.Module]] = {}

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
        add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None, vdim: int | None = None,
        batch_first: bool = False, out_dim: int | None = None, device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(num_heads * head_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn,
                         num_heads * head_dim if kdim is None else kdim, num_heads * head_dim if vdim is None else vdim,
                         batch_first, device, dtype)
        inner, factory = num_heads * head_dim, {"device": device, "dtype": dtype}
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        self.embed_dim, self.kdim, self.vdim, self.head_dim = embed_dim, kdim, vdim, head_dim
        self._qkv_same_embed_dim = kdim == embed_dim and vdim == embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(inner, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(inner, kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(inner, vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(
            inner, embed_dim if out_dim is None else out_dim, bias=bias, **factory
        )
        self._reset_parameters()

    @classmethod
    def of(cls, original: type[nn.Module]) -> type[nn.Module]:
        """The pruned class for instances of ``original`` (``nn.MultiheadAttention`` or a subclass of it that
        keeps its forward): this class, or a subclass of both."""
        if original is nn.MultiheadAttention:
            return cls
        if original not in cls._subclasses:
            cls._subclasses[original] = type(f"Pruned{original.__name__}", (cls, original), {"__module__": __name__})
        return cls._subclasses[original]

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return multi_head_attention(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                    average_attn_weights, is_causal)
