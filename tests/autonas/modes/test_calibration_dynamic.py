"""Core BN recalibration on dynamic (sliced) batch norms of a search space."""

from __future__ import annotations

import pytest
import torch

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_fastnas.digits import DigitsResNet


def test_failed_recalibration_restores_full_buffers_at_a_small_subnet() -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(DigitsResNet((16, 32, 64)), ["fastnas"])
    mtn.sample(model, "min")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    def loop(m: torch.nn.Module) -> None:
        m(torch.randn(4, 1, 8, 8))
        raise RuntimeError("data source broke")

    with pytest.raises(RuntimeError, match="data source broke"):
        mo.recalibrate_batchnorm(model, loop)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_recalibration_at_a_small_subnet_changes_only_active_channels() -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(DigitsResNet((16, 32, 64)), ["fastnas"])
    mtn.sample(model, "min")
    bn = model.stem[1]
    active = bn.num_features
    full_before = bn._buffers["running_mean"].clone()
    seen = mo.recalibrate_batchnorm(model, lambda m: [m(torch.randn(8, 1, 8, 8) + 3) for _ in range(8)])
    full_after = bn._buffers["running_mean"]
    assert seen == 8 and active < full_after.numel()
    assert not torch.equal(full_after[:active], full_before[:active])
    assert torch.equal(full_after[active:], full_before[active:])
