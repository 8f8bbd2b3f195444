"""The distillation losses of one layer pair: softened KL divergence, mean squared error, cosine distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_term"]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs are compared in float32 (a softmax over many classes in bf16 is too coarse)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_term(loss: str, student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, dim: int) -> torch.Tensor:
    """The scalar loss between a student output and a teacher output of the same shape.

    - ``kl_div``: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over ``dim``, averaged
      over every other position (the batch, and e.g. the tokens or pixels). The ``T^2`` keeps the
      gradient scale independent of ``T`` (Hinton et al., 2015).
    - ``mse``: mean squared difference.
    - ``cosine``: ``1 - cosine similarity`` along ``dim``, averaged over the other positions.
    """
    s, t = _wide(student), _wide(teacher)
    if loss == "kl_div":
        log_s = F.log_softmax(s / temperature, dim=dim)
        log_t = F.log_softmax(t / temperature, dim=dim)
        per_position = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim)
        return per_position.mean() * temperature * temperature
    if loss == "mse":
        return F.mse_loss(s, t)
    if loss == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=dim)).mean()
    raise ValueError(f"unknown distillation loss {loss!r}")  # the config only admits LOSSES
