"""The computation of an ``nn.MultiheadAttention`` whose heads do not fill its embedding width.

``F.multi_head_attention_forward`` derives the head size as ``embed_dim // num_heads`` and reshapes the
projections to ``embed_dim``, so it cannot run ``num_heads * head_dim != embed_dim``. This is the same
computation with the inner width ``num_heads * head_dim`` kept apart from the query width, the key and
value widths and the output width (the output projection's rows). It follows the semantics of
``nn.MultiheadAttention.forward`` (batch-first and unbatched inputs, boolean or additive masks,
``key_padding_mask``, ``bias_k``/``bias_v``, ``add_zero_attn``, attention dropout, the per-head or
averaged weights, ``is_causal`` as a hint) and counts the same FLOPs (the same matmuls).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["multi_head_attention"]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: masked out) as an additive float mask; a float mask as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def _pad_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more key position (a learnt ``bias_k`` or a zero key), never masked."""
    return None if mask is None else F.pad(mask, (0, 1))


def _project(m: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The q, k and v projections (one matmul for self-attention with packed weights, as torch does)."""
    bias = m.in_proj_bias
    bq, bk, bv = (None, None, None) if bias is None else bias.chunk(3)
    if not m._qkv_same_embed_dim:
        return (F.linear(query, m.q_proj_weight, bq), F.linear(key, m.k_proj_weight, bk),
                F.linear(value, m.v_proj_weight, bv))
    weight = m.in_proj_weight
    if query is key and key is value:
        return tuple(F.linear(query, weight, bias).chunk(3, dim=-1))
    wq, wk, wv = weight.chunk(3)
    q = F.linear(query, wq, bq)
    if key is value:
        kv_bias = None if bk is None or bv is None else torch.cat([bk, bv])
        k, v = F.linear(key, torch.cat([wk, wv]), kv_bias).chunk(2, dim=-1)
        return q, k, v
    return q, F.linear(key, wk, bk), F.linear(value, wv, bv)


def multi_head_attention(
    m: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``m``'s attention on the arguments of ``nn.MultiheadAttention.forward``, with ``m.num_heads`` heads
    of ``m.head_dim`` features whatever ``m.embed_dim`` is."""
    batched = query.dim() == 3
    same_kv, same_qk = key is value, query is key
    if batched and m.batch_first:
        query = query.transpose(0, 1)
        key = query if same_qk else key.transpose(0, 1)
        value = key if same_kv else value.transpose(0, 1)
    elif not batched:
        query = query.unsqueeze(1)
        key = query if same_qk else key.unsqueeze(1)
        value = key if same_kv else value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    length, batch = query.shape[0], query.shape[1]
    heads, head_dim = int(m.num_heads), int(m.head_dim)
    q, k, v = _project(m, query, key, value)

    key_padding_mask = _additive(key_padding_mask, q.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("is_causal is a hint that attn_mask is causal: pass the mask too (as nn.MultiheadAttention needs)")
    causal = is_causal and key_padding_mask is None and not need_weights
    attn_mask = None if causal else _additive(attn_mask, q.dtype)
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)  # (1, L, S): the same for every batch element and head
    if m.bias_k is not None and m.bias_v is not None:
        k = torch.cat([k, m.bias_k.repeat(1, batch, 1)])
        v = torch.cat([v, m.bias_v.repeat(1, batch, 1)])
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)

    # (L, N, heads * head_dim) -> (N * heads, L, head_dim)
    q = q.reshape(length, batch * heads, head_dim).transpose(0, 1)
    k = k.reshape(k.shape[0], batch * heads, head_dim).transpose(0, 1)
    v = v.reshape(v.shape[0], batch * heads, head_dim).transpose(0, 1)
    if m.add_zero_attn:
        zeros = q.new_zeros(batch * heads, 1, head_dim)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
    source = k.shape[1]
    if key_padding_mask is not None:
        per_key = key_padding_mask.view(batch, 1, 1, source).expand(-1, heads, -1, -1).reshape(batch * heads, 1, source)
        attn_mask = per_key if attn_mask is None else attn_mask + per_key
    dropout = float(m.dropout) if m.training else 0.0

    weights = None
    if need_weights:
        scaled = q * head_dim**-0.5
        kt = k.transpose(1, 2)
        scores = torch.bmm(scaled, kt) if attn_mask is None else torch.baddbmm(attn_mask, scaled, kt)
        probs = F.softmax(scores, dim=-1)
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout)
        out = torch.bmm(probs, v).transpose(0, 1).reshape(length * batch, heads * head_dim)
        weights = probs.view(batch, heads, length, source)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        if attn_mask is not None:
            attn_mask = attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1 else attn_mask.view(batch, heads, -1, source)
        q4, k4, v4 = (t.view(batch, heads, -1, head_dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask, dropout, causal)
        out = out.permute(2, 0, 1, 3).reshape(length * batch, heads * head_dim)
    out = F.linear(out, m.out_proj.weight, m.out_proj.bias).view(length, batch, -1)
    if not batched:
        return out.squeeze(1), None if weights is None else weights.squeeze(0)
    return (out.transpose(0, 1) if m.batch_first else out), weights
