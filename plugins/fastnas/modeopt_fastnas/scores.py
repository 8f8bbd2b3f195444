"""Ready score objects: accuracy and loss on a data loader, agreement with a reference model's outputs.

Each is a :class:`BatchScore`: a ``score(model) -> float`` callable (pass it as ``score_func``) that
also exposes its fixed model inputs and how to turn the model's outputs on them into the score. With
that, FastNAS computes the outputs itself and runs only the part of the network downstream of the
layer it narrows (see ``modeopt_fastnas.downstream``); any other ``score_func(model)`` works too, at
the cost of a full forward pass per evaluation.

Batches are drawn from the loader once, at construction, and kept in memory, so every evaluation
sees the same data (a shuffling loader would otherwise add noise to every comparison).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeopt_core import ConfigError
from modeopt_core.sdk import run_with_dummy_input

__all__ = [
    "AccuracyScore",
    "BatchScore",
    "LanguageModelScore",
    "LossScore",
    "OutputAgreement",
    "model_outputs",
    "random_inputs",
    "random_tokens",
]


def random_inputs(shape: Sequence[int], num_batches: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """``num_batches`` fixed standard-normal batches of ``shape`` (reproducible: own generator)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(num_batches)]


def random_tokens(vocab_size: int, shape: Sequence[int] = (4, 64), num_batches: int = 2, seed: int = 0
                  ) -> list[torch.Tensor]:
    """``num_batches`` fixed batches of uniformly random token ids in ``[0, vocab_size)`` (own generator)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab_size, tuple(shape), generator=gen) for _ in range(num_batches)]


def model_outputs(model: nn.Module, inputs: Iterable[Any]) -> list[Any]:
    """``model``'s outputs on ``inputs`` (dummy-input convention) in eval mode without gradients; the
    train flags of every module are restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return [run_with_dummy_input(model, x) for x in inputs]
    finally:
        for module, flag in flags.items():
            module.training = flag


def default_output(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: the tensor itself, ``output["logits"]`` (or
    ``.logits``) of a dict-like output, else the first item of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return default_output(output["logits"])
    if hasattr(output, "logits"):
        return default_output(output.logits)
    if isinstance(output, (tuple, list)) and output:
        return default_output(output[0])
    raise ConfigError(
        f"cannot find the prediction tensor in a model output of type {type(output).__name__}; pass "
        "output_func=lambda out: <the logits tensor>"
    )


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"a data-loader batch of type {type(batch).__name__} is not an (input, target) pair; pass "
        "collect_func=lambda batch: <model input> and target_func=lambda batch: <targets>"
    )


class BatchScore(ABC):
    """A score computed from a model's outputs on fixed inputs; ``score(model)`` runs the model on them.

    Subclasses set :attr:`inputs` and implement :meth:`score_outputs`. Calling the object runs the model
    in eval mode without gradients (train flags restored) and scores its outputs; FastNAS may instead
    compute the same outputs with cached upstream activations and call :meth:`score_outputs` itself.
    """

    inputs: list[Any]
    """The model inputs, one per batch, in the dummy-input convention (a tensor or a tuple of args)."""

    @abstractmethod
    def score_outputs(self, outputs: Sequence[Any]) -> float:
        """The score (higher is better) of the model outputs on :attr:`inputs`, in the same order."""

    def __call__(self, model: nn.Module) -> float:
        return self.score_outputs(model_outputs(model, self.inputs))


def _draw(batches: Iterable[Any], max_batches: int | None, empty: str) -> list[Any]:
    """The first ``max_batches`` batches (all for None), drawn once; ``empty`` is the error for none."""
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ConfigError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
    drawn = list(itertools.islice(batches, max_batches))
    if not drawn:
        raise ConfigError(empty)
    return drawn


class _LabelledScore(BatchScore):
    def __init__(
        self,
        data_loader: Iterable[Any],
        *,
        max_batches: int | None,
        collect_func: Callable[[Any], Any] | None,
        target_func: Callable[[Any], Any] | None,
        output_func: Callable[[Any], torch.Tensor] | None,
    ) -> None:
        batches = _draw(data_loader, max_batches, f"{type(self).__name__} got an empty data loader; pass at least "
                        "one batch")
        self.inputs = [collect_func(b) if collect_func else _split_batch(b)[0] for b in batches]
        self.targets = [target_func(b) if target_func else _split_batch(b)[1] for b in batches]
        self.output_func = output_func or default_output


class AccuracyScore(_LabelledScore):
    """Top-``k`` accuracy in percent over the first ``max_batches`` batches of ``data_loader``.

    Args:
        collect_func: maps a batch to the model input (default: the first item of an ``(input, target)``
            batch).
        target_func: maps a batch to the class indices (default: the second item).
        output_func: maps a model output to the logits (default: :func:`default_output`).
    """

    def __init__(
        self,
        data_loader: Iterable[Any],
        *,
        topk: int = 1,
        max_batches: int | None = None,
        collect_func: Callable[[Any], Any] | None = None,
        target_func: Callable[[Any], Any] | None = None,
        output_func: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be an int >= 1, got {topk!r}")
        super().__init__(data_loader, max_batches=max_batches, collect_func=collect_func, target_func=target_func,
                         output_func=output_func)
        self.topk = topk

    def score_outputs(self, outputs: Sequence[Any]) -> float:
        correct = total = 0
        for out, target in zip(outputs, self.targets):
            logits = self.output_func(out)
            target = torch.as_tensor(target, device=logits.device)
            top = logits.topk(self.topk, dim=-1).indices
            correct += int((top == target.unsqueeze(-1)).any(-1).sum())
            total += target.numel()
        return 100.0 * correct / max(total, 1)


class LossScore(_LabelledScore):
    """Minus the mean of ``loss_func(output, target)`` over the samples (higher is better).

    ``loss_func`` returns the mean over a batch (like ``F.cross_entropy``); batches are weighted by
    their number of targets. Other arguments as for :class:`AccuracyScore`.
    """

    def __init__(
        self,
        data_loader: Iterable[Any],
        loss_func: Callable[[torch.Tensor, Any], torch.Tensor] = F.cross_entropy,
        *,
        max_batches: int | None = None,
        collect_func: Callable[[Any], Any] | None = None,
        target_func: Callable[[Any], Any] | None = None,
        output_func: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        if not callable(loss_func):
            raise ConfigError(f"loss_func must be callable(output, target) -> loss, got {loss_func!r}")
        super().__init__(data_loader, max_batches=max_batches, collect_func=collect_func, target_func=target_func,
                         output_func=output_func)
        self.loss_func = loss_func

    def score_outputs(self, outputs: Sequence[Any]) -> float:
        total = weight = 0.0
        for out, target in zip(outputs, self.targets):
            n = len(target) if hasattr(target, "__len__") else 1
            total += float(self.loss_func(self.output_func(out), target)) * n
            weight += n
        return -total / max(weight, 1.0)


class OutputAgreement(BatchScore):
    """``score(model)``: agreement of ``model``'s outputs with reference outputs on fixed inputs.

    The score is ``1 - sum((y - y_ref)^2) / sum(y_ref^2)`` over all batches: 1 for identical outputs,
    0 for outputs no closer than all zeros, below 0 for worse. Data-free when given
    :func:`random_inputs`.

    Args:
        model: the unpruned model whose outputs are the reference (run once, now).
        inputs: the fixed batches (each in the dummy-input convention: a tensor or a tuple of args).
    """

    def __init__(self, model: nn.Module, inputs: Sequence[Any]) -> None:
        self.inputs = list(inputs)
        if not self.inputs:
            raise ConfigError("OutputAgreement needs at least one input batch; pass e.g. random_inputs(shape)")
        self.reference = [self._tensor(y) for y in model_outputs(model, self.inputs)]
        self._energy = sum(float(y.pow(2).sum()) for y in self.reference) or 1.0

    @staticmethod
    def _tensor(output: Any) -> torch.Tensor:
        return default_output(output).float()

    def score_outputs(self, outputs: Sequence[Any]) -> float:
        error = sum(float((self._tensor(y) - r).pow(2).sum()) for y, r in zip(outputs, self.reference))
        return 1.0 - error / self._energy


class LanguageModelScore(BatchScore):
    """Minus the mean next-token cross entropy of a causal language model on fixed token batches.

    Each batch is a ``LongTensor`` of token ids (``batch x length``) or a mapping with ``input_ids`` and
    optionally ``attention_mask`` and ``labels`` (a tokenizer's output). The model is called with the
    ids (and the mask) as keyword arguments for a mapping, positionally for a tensor; position ``t``'s
    logits predict token ``t + 1``. Padding (mask 0) and labels equal to ``ignore_index`` do not count;
    the mean is over all counted tokens of all batches. Higher is better (0 is a perfect model).

    Args:
        batches: the token batches (drawn once; the first ``max_batches``).
        output_func: maps a model output to the ``batch x length x vocab`` logits (default:
            :func:`default_output`, which reads ``.logits`` of a Hugging Face output).
    """

    def __init__(
        self,
        batches: Iterable[Any],
        *,
        max_batches: int | None = None,
        ignore_index: int = -100,
        output_func: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        drawn = _draw(batches, max_batches, "LanguageModelScore got no token batches; pass e.g. random_tokens(vocab_size)")
        self.inputs, self.labels = [], []
        for i, batch in enumerate(drawn):
            model_input, labels = self._split(batch, i, ignore_index)
            self.inputs.append(model_input)
            self.labels.append(labels)
        self.ignore_index = ignore_index
        self.output_func = output_func or default_output

    @staticmethod
    def _split(batch: Any, i: int, ignore_index: int) -> tuple[Any, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            ids, mask, labels = batch, None, None
        elif isinstance(batch, Mapping) and "input_ids" in batch:
            ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
        else:
            raise ConfigError(
                f"token batch {i} is a {type(batch).__name__}: expected a LongTensor of token ids or a mapping "
                "with 'input_ids' (and optionally 'attention_mask', 'labels')"
            )
        ids = torch.as_tensor(ids)
        if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64) or ids.shape[1] < 2:
            raise ConfigError(f"token batch {i} has input_ids of shape {tuple(ids.shape)} and dtype {ids.dtype}: "
                              "expected integer ids of shape (batch, length >= 2)")
        labels = ids.clone() if labels is None else torch.as_tensor(labels).clone()
        if mask is not None:
            mask = torch.as_tensor(mask)
            labels[mask == 0] = ignore_index
            return ({"input_ids": ids, "attention_mask": mask},), labels
        return (ids if isinstance(batch, torch.Tensor) else ({"input_ids": ids},)), labels

    def score_outputs(self, outputs: Sequence[Any]) -> float:
        total, count = 0.0, 0
        for out, labels in zip(outputs, self.labels):
            logits = self.output_func(out)
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            targets = labels[:, 1:].reshape(-1).to(logits.device)
            total += float(F.cross_entropy(shifted, targets, ignore_index=self.ignore_index, reduction="sum"))
            count += int((targets != self.ignore_index).sum())
        if count == 0:
            raise ConfigError("LanguageModelScore: every label is padding or ignore_index; nothing to score")
        return -total / count
