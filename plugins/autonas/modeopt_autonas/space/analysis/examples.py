"""Example inputs for models that describe their own input (so they can be traced on values without one)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["example_input"]

_TOKENS = 8  # tokens of a built example sequence: enough for every attention path, cheap to run
#: torchvision's Swin takes any image size (its windows pad); its channel flow does not depend on the size,
#: and 64 px (16 x 16 patches, a 2 x 2 map in the last stage) is cheap to run
_SWIN_SIDE = 64


def _image_side(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and size and all(isinstance(s, int) for s in size):
        return int(size[-1])
    return None


def example_input(model: nn.Module) -> Any:
    """An input that ``model`` declares through its own attributes, or None.

    - Hugging Face models: ``input_ids`` of 8 tokens (token ids below the vocabulary size) for text
      models, ``pixel_values`` at ``config.image_size`` for vision models (by ``main_input_name``);
    - timm and torchvision vision transformers: an image at the size their patch embedding was built
      for (``patch_embed.img_size``, torchvision's ``image_size``); torchvision's Swin (any size): 64 px.

    Other models get None: they are traced symbolically unless the caller passes a ``dummy_input``.
    """
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is not None and isinstance(main, str):
        if main == "input_ids":
            vocab = int(getattr(config, "vocab_size", 0) or 0)
            high = max(2, min(vocab, 1000)) if vocab else 100
            generator = torch.Generator().manual_seed(0)
            return ({"input_ids": torch.randint(1, high, (1, _TOKENS), generator=generator)},)
        side = _image_side(getattr(config, "image_size", None))
        if main == "pixel_values" and side is not None:
            channels = int(getattr(config, "num_channels", 3))
            return ({"pixel_values": torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(0))},)
        return None
    patch = getattr(model, "patch_embed", None)
    side = _image_side(getattr(patch, "img_size", None)) if patch is not None else None
    if side is None and type(model).__module__.startswith("torchvision.models.vision_transformer"):
        side = _image_side(getattr(model, "image_size", None))
    if side is None and type(model).__module__.startswith("torchvision.models.swin_transformer"):
        side = _SWIN_SIDE
    if side is None:
        return None
    channels = int(getattr(patch, "in_chans", 3) or 3) if patch is not None else 3
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(0))
