from __future__ import annotations

import pytest
import torch
from torch import nn

from modeopt_core.calibration import (
    CalibrationError,
    DataLoaderForwardLoop,
    default_collect_func,
    make_forward_loop,
    recalibrate_batchnorm,
)
from modeopt_core.errors import ModeoptError


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, dict[str, object]]] = []

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.seen.append((x, kwargs))
        return x


def test_default_collect_func() -> None:
    x, y = torch.ones(2), torch.zeros(2)
    assert default_collect_func((x, y)) is x
    assert default_collect_func([x, y]) is x
    assert default_collect_func(x) is x
    assert default_collect_func({"x": x}) == {"x": x}
    with pytest.raises(CalibrationError, match="collect_func"):
        default_collect_func(())


def test_forward_loop_counts_batches_and_respects_max_batches() -> None:
    batches = [(torch.full((1,), float(i)), torch.zeros(1)) for i in range(5)]
    net = CountingNet()
    loop = make_forward_loop(batches, max_batches=3)
    assert isinstance(loop, DataLoaderForwardLoop)
    assert loop(net) == 3 and loop.last_num_batches == 3
    assert [float(x) for x, _ in net.seen] == [0.0, 1.0, 2.0]
    assert loop(net) == 3 and loop.total_num_batches == 6
    full = make_forward_loop(batches)
    assert full(CountingNet()) == 5
    assert make_forward_loop([])(net) == 0


def test_forward_loop_collect_func_uses_dummy_input_convention_and_no_grad() -> None:
    grads: list[bool] = []

    class Net(nn.Module):
        def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
            grads.append(torch.is_grad_enabled())
            return x * scale

    batches = [{"image": torch.ones(1), "scale": 2.0}]
    loop = make_forward_loop(batches, collect_func=lambda b: (b["image"], {"scale": b["scale"]}))
    assert loop(Net()) == 1 and grads == [False]


@pytest.mark.parametrize(("kwargs", "fragment"), [({"max_batches": 0}, "max_batches"), ({}, "iterable")])
def test_forward_loop_rejects_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    loader = [] if kwargs else 5
    with pytest.raises(CalibrationError, match=fragment) as info:
        make_forward_loop(loader, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ModeoptError)


# ----------------------------------------------------------------------------- BN recalibration


class DynamicBN(nn.BatchNorm1d):
    """Stands in for a plugin's dynamic BN subclass: must be recognised by isinstance."""


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(0.9)
        self.lin = nn.Linear(4, 3)
        self.bn = DynamicBN(3, momentum=0.3)
        self.bn_plain = nn.BatchNorm1d(3, track_running_stats=False)  # no running stats: ignored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_plain(self.bn(self.lin(self.drop(x))))


def _batches(n: int, size: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(size, 4, generator=gen) * 2.0 + 3.0 for _ in range(n)]


def test_recalibration_sets_statistics_of_the_data_and_restores_modes() -> None:
    model = BNNet().train()
    model.lin.eval()  # per-module flags must come back exactly
    batches = _batches(10)
    with torch.no_grad():
        feats = [model.lin(b) for b in batches]  # BN input without dropout (eval mode everywhere else)
    seen = recalibrate_batchnorm(model, make_forward_loop(batches))
    assert seen == 10
    # Cumulative average over equal-sized batches: mean of batch means / unbiased batch variances.
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model.bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var, expected_var, atol=1e-4)
    assert int(model.bn.num_batches_tracked) == 10
    assert model.training and model.drop.training and not model.lin.training and model.bn.training
    assert model.bn.momentum == 0.3


def test_recalibration_too_few_batches_warns_with_the_count_and_keeps_the_estimate() -> None:
    model = BNNet().eval()
    batches = _batches(2)
    with pytest.warns(UserWarning, match=r"only 2 batch\(es\) \(min_batches=8\)"):
        assert recalibrate_batchnorm(model, make_forward_loop(batches)) == 2
    assert not model.training and not model.bn.training
    with torch.no_grad():
        expected = torch.stack([model.lin(b).mean(0) for b in batches]).mean(0)
    assert torch.allclose(model.bn.running_mean, expected, atol=1e-5)
    assert recalibrate_batchnorm(model, make_forward_loop(batches), min_batches=2) == 2  # no warning


def test_recalibration_strict_or_empty_raises_and_keeps_old_statistics() -> None:
    model = BNNet()
    model.bn.running_mean.fill_(7.0)
    with pytest.raises(CalibrationError, match=r"only 3 batch\(es\).*min_batches=5"):
        recalibrate_batchnorm(model, make_forward_loop(_batches(3)), min_batches=5, strict=True)
    assert torch.equal(model.bn.running_mean, torch.full((3,), 7.0))
    with pytest.raises(CalibrationError, match="saw no batch"):
        recalibrate_batchnorm(model, make_forward_loop([]))
    assert torch.equal(model.bn.running_mean, torch.full((3,), 7.0))
    assert model.bn.momentum == 0.3 and model.training


def test_recalibration_failure_in_forward_loop_restores_everything() -> None:
    model = BNNet().train()
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}

    def failing_loop(m: nn.Module) -> None:
        m(_batches(1)[0])
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        recalibrate_batchnorm(model, failing_loop)
    after = model.bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.drop.training and model.bn.momentum == 0.3


def test_recalibration_without_batchnorm_is_a_noop() -> None:
    calls: list[nn.Module] = []
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), calls.append) == 0
    assert calls == []
