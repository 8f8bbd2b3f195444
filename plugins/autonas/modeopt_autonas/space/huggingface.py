"""Hugging Face models after export: layer indices renumbered, and the config describing the exported model.

A Hugging Face model reads almost nothing of its config at forward time (attention infers the number
of heads from the projections), but two things must follow an export: the attention modules'
``layer_idx`` (the key of their cache slot) must count the kept layers 0..n-1, and, for
``save_pretrained``/``from_pretrained``, the config must give the new sizes (``hidden_size``,
``intermediate_size``, heads, ``num_hidden_layers``, ``head_dim``). A config can only describe a
*uniform* model (every layer the same); :func:`describe_exported` reports whether it could. Nothing here
imports ``transformers``: models are recognised by their ``config`` and module attributes.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from torch import nn

__all__ = ["describe_exported", "is_huggingface"]

_log = logging.getLogger(__name__)

#: the config's names of each size, by family (the first one the config has is set)
_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEADS = ("num_key_value_heads",)
_INTERMEDIATE = ("intermediate_size", "n_inner", "ffn_dim")
#: the first projection of an MLP, by module name suffix
_MLP_IN = ("gate_proj", "up_proj", "fc1", "c_fc", "intermediate.dense", "dense_h_to_4h", "w1")
_Q = ("q_proj", "query", "c_attn")
_K = ("k_proj", "key")


def is_huggingface(model: nn.Module) -> bool:
    """Whether ``model`` looks like a Hugging Face ``PreTrainedModel`` (a config with ``to_dict``)."""
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "to_dict") and hasattr(model, "get_input_embeddings")


def _out_features(module: nn.Module) -> int | None:
    for attr in ("out_features", "nf"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of layers: the largest ``ModuleList`` whose blocks hold a ``layer_idx``."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if type(module) is nn.ModuleList and len(module) and all(
            any(isinstance(getattr(m, "layer_idx", None), int) for m in block.modules()) for block in module
        ):
            if best is None or len(module) > len(best):
                best = module
    return best


def _set(config: Any, names: tuple[str, ...], value: Any) -> None:
    for name in names:
        if hasattr(config, name):
            setattr(config, name, value)
            return


def _per_layer(layers: nn.ModuleList, suffixes: tuple[str, ...]) -> list[int]:
    found = []
    for block in layers:
        for name, module in block.named_modules():
            if name.endswith(suffixes) and _out_features(module) is not None:
                found.append(int(_out_features(module)))  # type: ignore[arg-type]
                break
    return found


def describe_exported(model: nn.Module) -> bool:
    """Renumber ``layer_idx`` and update the config of an exported Hugging Face model; return whether the
    config now describes the model exactly (a uniform subnet), i.e. whether ``save_pretrained`` output
    loads back with ``from_pretrained``. A non-HF model is left alone (True)."""
    if not is_huggingface(model):
        return True
    config: Any = _own_config(model)
    layers = _layer_list(model)
    uniform = True
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if isinstance(getattr(embedding, "embedding_dim", None), int):
        _set(config, _HIDDEN, embedding.embedding_dim)
    if layers is not None:
        kept: list[int] = []  # the original index of each kept layer
        for i, block in enumerate(layers):
            indexed: list[Any] = [m for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
            kept.append(int(indexed[0].layer_idx))
            for m in indexed:
                m.layer_idx = i
        if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) >= max(kept, default=-1) + 1:
            config.layer_types = [config.layer_types[i] for i in kept]
        _set(config, _LAYERS, len(layers))
        mlp = _per_layer(layers, _MLP_IN)
        if mlp:
            uniform &= len(set(mlp)) == 1
            _set(config, _INTERMEDIATE, mlp[0])
        head_dim = _head_dim(layers, config)
        if head_dim:
            queries = _per_layer(layers, _Q)
            if queries:
                fused = any(name.endswith("c_attn") for name, _ in layers[0].named_modules())
                heads = [q // (3 if fused else 1) // head_dim for q in queries]
                uniform &= len(set(heads)) == 1
                _set(config, _HEADS, heads[0])
            keys = _per_layer(layers, _K)
            if keys and any(hasattr(config, n) for n in _KV_HEADS):
                kv = [k // head_dim for k in keys]
                uniform &= len(set(kv)) == 1
                _set(config, _KV_HEADS, kv[0])
            if hasattr(config, "head_dim"):
                config.head_dim = head_dim
            else:  # the config derives head_dim = hidden / heads: it must still hold
                hidden = next((getattr(config, n) for n in _HIDDEN if hasattr(config, n)), None)
                heads_now = next((getattr(config, n) for n in _HEADS if hasattr(config, n)), None)
                uniform &= bool(hidden and heads_now and hidden == heads_now * head_dim)
    if not uniform:
        _log.info("the exported model is not uniform across layers: its config cannot describe it; save it with "
                  "modeopt_core.save (save_pretrained's output would not load with from_pretrained)")
    return uniform


def _own_config(model: nn.Module) -> Any:
    """A copy of the model's config that the model (and every submodule holding it) now uses, so that
    the config object the user built the model from keeps the original sizes (a fresh model built from
    it is what a checkpoint of the export restores into). Copied once per model (the flag lives on the
    model, not in the config, which ``save_pretrained`` would write out)."""
    config: Any = model.config
    if model.__dict__.get("_modeopt_own_config", False):
        return config
    own = copy.deepcopy(config)
    for module in model.modules():
        if module.__dict__.get("config") is config:
            module.__dict__["config"] = own
    model.__dict__["_modeopt_own_config"] = True
    return own


def _head_dim(layers: nn.ModuleList, config: Any) -> int | None:
    for block in layers:
        for m in block.modules():
            for attr in ("head_dim", "attention_head_size"):
                value = getattr(m, attr, None)
                if isinstance(value, int) and value > 0:
                    return value
    hidden = next((getattr(config, n) for n in _HIDDEN if hasattr(config, n)), None)
    heads = next((getattr(config, n) for n in _HEADS if hasattr(config, n)), None)
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None
