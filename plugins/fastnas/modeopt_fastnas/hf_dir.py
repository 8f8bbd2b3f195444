"""Local Hugging Face model directories for ``modeopt prune --hf``: load without the network, write back.

Loading reads ``config.json`` and safetensors weights from the directory only (``local_files_only``,
``use_safetensors``): a directory holding only pickled ``pytorch_model.bin`` weights is refused, since
loading those would run code. Writing goes to a temporary directory next to the target, which then
replaces the target in one rename, so an interrupted run never leaves a half-written model directory
(an existing one is only removed after the new one is complete).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeopt_core import ConfigError

__all__ = ["TOKENIZER_FILES", "dummy_input_for", "load_hf_dir", "write_hf_dir"]

#: files of a tokenizer (and of generation defaults) copied from the source directory to the written one
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("--hf needs the transformers package: pip install transformers") from None
    return transformers


def load_hf_dir(path: Path) -> nn.Module:
    """The model saved in ``path`` (``save_pretrained`` output), built from its own config and weights."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"--hf {str(path)!r} is not a Hugging Face model directory (no config.json); pass the "
                          "folder that save_pretrained wrote")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        raise ConfigError(
            f"--hf {str(path)!r} has no safetensors weights{' (only ' + ', '.join(pickled) + ')' if pickled else ''}: "
            "pickled weights can run code when loaded and are refused; re-save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    names = list(getattr(config, "architectures", None) or [])
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise ConfigError(f"--hf {str(path)!r}: config.json names the architectures {names or 'none'}, none of which "
                          "this transformers version has; save the model with a transformers version that does")
    model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--hf {str(path)!r}: {cls.__name__}.from_pretrained returned a {type(model).__name__}")
    return model.eval()


def dummy_input_for(model: nn.Module, shape: tuple[int, ...] | None, seed: int) -> tuple[Any, str]:
    """A dummy input for a Hugging Face model and a description: token ids (``batch x length``, default
    ``1 x 64``) for text models, pixel values (``batch x channels x size x size``) for vision models."""
    gen = torch.Generator().manual_seed(seed)
    config: Any = getattr(model, "config", None)
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        if shape is None:
            size = getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else int(size[0])
            shape = (1, int(getattr(config, "num_channels", 3)), size, size)
        return torch.randn(*shape, generator=gen), "pixel values " + "x".join(map(str, shape))
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise ConfigError("the model's config has no vocab_size: cannot build token ids; give --input-shape and a "
                          "--score of your own")
    shape = shape or (1, 64)
    if len(shape) != 2:
        raise ConfigError(f"--input-shape for a text model is BATCH,LENGTH (token ids), got {','.join(map(str, shape))}")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and shape[1] > limit:
        raise ConfigError(f"--input-shape length {shape[1]} exceeds the model's {limit} positions")
    return torch.randint(vocab, shape, generator=gen), "token ids " + "x".join(map(str, shape))


def write_hf_dir(model: nn.Module, source: Path, target: Path) -> list[str]:
    """Write ``model`` with ``save_pretrained`` to ``target`` (atomically, see the module doc) and copy the
    tokenizer files of ``source``; returns the names of the files copied."""
    target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--hf-out {str(target)!r} is a file; give a directory path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
        copied = []
        for name in TOKENIZER_FILES:
            if (source / name).is_file() and not (staging / name).exists():
                shutil.copy2(source / name, staging / name)
                copied.append(name)
        if not target.exists():
            os.replace(staging, target)
            return copied
        # a directory cannot be renamed over a non-empty one: move the old one aside first, and back if
        # the second rename fails, so that one complete model directory is always at the target
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / target.name)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside / target.name, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return copied
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
