"""Data-free score functions: how closely a pruned model reproduces the unpruned model's outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from modeopt_core import ConfigError
from modeopt_core.sdk import run_with_dummy_input

__all__ = ["OutputAgreement", "random_inputs"]


def random_inputs(shape: Sequence[int], num_batches: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """``num_batches`` fixed standard-normal batches of ``shape`` (reproducible: own generator)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(num_batches)]


def _outputs(model: nn.Module, inputs: Sequence[Any]) -> list[torch.Tensor]:
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return [torch.as_tensor(run_with_dummy_input(model, x)).float() for x in inputs]
    finally:
        for module, flag in flags.items():
            module.training = flag


class OutputAgreement:
    """``score(model)``: agreement of ``model``'s outputs with reference outputs on fixed inputs.

    The score is ``1 - sum((y - y_ref)^2) / sum(y_ref^2)`` over all batches: 1 for identical outputs,
    0 for outputs no closer than all zeros, below 0 for worse. The model runs in eval mode, without
    gradients; its train flags are restored.

    Args:
        model: the unpruned model whose outputs are the reference (run once, now).
        inputs: the fixed batches (each in the dummy-input convention: a tensor or a tuple of args).
    """

    def __init__(self, model: nn.Module, inputs: Sequence[Any]) -> None:
        self.inputs = list(inputs)
        if not self.inputs:
            raise ConfigError("OutputAgreement needs at least one input batch; pass e.g. random_inputs(shape)")
        self.reference = _outputs(model, self.inputs)
        self._energy = sum(float(y.pow(2).sum()) for y in self.reference) or 1.0

    def __call__(self, model: nn.Module) -> float:
        outputs = _outputs(model, self.inputs)
        error = sum(float((y - r).pow(2).sum()) for y, r in zip(outputs, self.reference))
        return 1.0 - error / self._energy
