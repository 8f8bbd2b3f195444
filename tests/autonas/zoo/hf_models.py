"""Tiny random-config transformer models (no download): Hugging Face, timm and torchvision.

Every builder returns ``(model, example)`` with the model in eval mode and ``example`` an input in the
dummy-input convention (a tensor, or a tuple ending with a dict of keyword arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["HF", "OTHERS", "build", "causal", "tokens"]

_VOCAB = 128


def tokens(batch: int = 2, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, _VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decoder(cls_name: str, config_name: str, **extra: Any) -> Callable[[str], tuple[nn.Module, Any]]:
    def make(attn: str = "sdpa") -> tuple[nn.Module, Any]:
        import transformers

        config = getattr(transformers, config_name)(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=_VOCAB, max_position_embeddings=64, attn_implementation=attn, **extra,
        )
        return getattr(transformers, cls_name)(config).eval(), ({"input_ids": tokens()},)

    return make


def _gpt2(attn: str = "sdpa") -> tuple[nn.Module, Any]:
    import transformers

    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=_VOCAB, n_positions=64,
                                     bos_token_id=1, eos_token_id=2, attn_implementation=attn)
    return transformers.GPT2LMHeadModel(config).eval(), ({"input_ids": tokens()},)


def _bert(attn: str = "sdpa") -> tuple[nn.Module, Any]:
    import transformers

    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=_VOCAB, max_position_embeddings=64, num_labels=3,
                                     attn_implementation=attn)
    return transformers.BertForSequenceClassification(config).eval(), ({"input_ids": tokens()},)


def _vit(attn: str = "sdpa") -> tuple[nn.Module, Any]:
    import transformers

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=3, attn_implementation=attn)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return transformers.ViTForImageClassification(config).eval(), ({"pixel_values": pixels},)


HF: dict[str, Callable[..., tuple[nn.Module, Any]]] = {
    "llama": _decoder("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True),
    "qwen2": _decoder("Qwen2ForCausalLM", "Qwen2Config"),
    "mistral": _decoder("MistralForCausalLM", "MistralConfig"),
    "gpt2": _gpt2,
    "bert": _bert,
    "vit": _vit,
}

#: models whose outputs are logits over the vocabulary of a causal LM (``generate`` works)
causal = frozenset({"llama", "qwen2", "mistral", "gpt2"})


def _timm(name: str) -> Callable[..., tuple[nn.Module, Any]]:
    def make(attn: str = "sdpa") -> tuple[nn.Module, Any]:
        import timm

        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=64).eval()
        return model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    return make


def _torchvision_vit(attn: str = "sdpa") -> tuple[nn.Module, Any]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10).eval()
    return model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _torchvision_swin(attn: str = "sdpa") -> tuple[nn.Module, Any]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    return model, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


OTHERS: dict[str, Callable[..., tuple[nn.Module, Any]]] = {
    "timm_vit": _timm("vit_tiny_patch16_224"),
    "timm_deit": _timm("deit_tiny_patch16_224"),
    "timm_swin": _timm("swin_tiny_patch4_window7_224"),
    "tv_vit": _torchvision_vit,
    "tv_swin": _torchvision_swin,
}


def build(name: str, attn: str = "sdpa", seed: int = 0) -> tuple[nn.Module, Any]:
    """The model ``name`` of :data:`HF` or :data:`OTHERS` with weights from ``seed``."""
    torch.manual_seed(seed)
    return {**HF, **OTHERS}[name](attn)
