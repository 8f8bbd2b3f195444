"""The ready score objects: the same values as hand-written scores, fixed batches, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modeopt_core import ConfigError
from modeopt_fastnas import AccuracyScore, BatchScore, LossScore, OutputAgreement, random_inputs
from modeopt_fastnas.digits import DigitsResNet, accuracy


def _loader(n: int = 50, shuffle: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return DigitsResNet((4, 8, 8)).eval()


def test_accuracy_score_equals_the_hand_written_accuracy_and_topk_grows() -> None:
    model, loader = _model(), _loader()
    score = AccuracyScore(loader)
    assert isinstance(score, BatchScore) and len(score.inputs) == 4
    assert score(model) == pytest.approx(accuracy(model, loader))
    assert AccuracyScore(loader, topk=10)(model) == 100.0 and AccuracyScore(loader, topk=3)(model) >= score(model)
    first = AccuracyScore(loader, max_batches=2).inputs
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, score.inputs))


def test_loss_score_is_minus_the_sample_weighted_mean_loss() -> None:
    model, loader = _model(), _loader()
    x, y = loader.dataset.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = -float(F.cross_entropy(model(x), y))
    assert LossScore(loader)(model) == pytest.approx(expected, rel=1e-5)


def test_batches_are_drawn_once_so_a_shuffling_loader_scores_the_same_every_time() -> None:
    model = _model()
    score = LossScore(_loader(shuffle=True))
    assert score(model) == score(model)
    model.train()
    score(model)
    assert model.training  # train flags are restored


def test_scores_from_outputs_equal_scores_of_the_model() -> None:
    model = _model()
    agreement = OutputAgreement(model, random_inputs((4, 1, 8, 8), num_batches=2))
    assert agreement(model) == pytest.approx(1.0)
    with torch.no_grad():
        outputs = [model(x) * 0 for x in agreement.inputs]
    assert agreement.score_outputs(outputs) == pytest.approx(0.0)


def test_dict_outputs_and_custom_batches() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _model()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x)}

    model, loader = Wrapped(), _loader()
    batches = [{"image": x, "label": y} for x, y in loader]
    score = AccuracyScore(batches, collect_func=lambda b: b["image"], target_func=lambda b: b["label"])
    assert score(model) == pytest.approx(accuracy(model.inner, loader))


def test_bad_inputs_say_what_to_pass() -> None:
    with pytest.raises(ConfigError, match="empty data loader"):
        AccuracyScore([])
    with pytest.raises(ConfigError, match="target_func"):
        AccuracyScore([torch.zeros(2, 1, 8, 8)])
    with pytest.raises(ConfigError, match="topk"):
        AccuracyScore(_loader(), topk=0)
    with pytest.raises(ConfigError, match="output_func"):
        AccuracyScore(_loader(), output_func=None).score_outputs([object()] * 4)
    with pytest.raises(ConfigError, match="at least one input batch"):
        OutputAgreement(_model(), [])
