"""The restore dry run: hooks see which pass they are in; modes that need data skip it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_core import ModeConfig, ModeDescriptor, hookimpl


class _ReadsWeights(ModeDescriptor):
    """Its restore reads weight values and says so (``supports_meta_restore``)."""

    name = "dry_reads_weights"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]
    supports_meta_restore = False  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return self.restore(model, config, {}), {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        model.first_value = float(next(model.parameters()).reshape(-1)[0].item())  # fails on meta tensors
        return model


class _Plain(ModeDescriptor):
    name = "dry_plain"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return model, {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        return model


class _Recorder:
    """A wrapper plugin recording every restore pass it sees."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, bool, str]] = []

    @hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(_ReadsWeights())
        register(_Plain())

    @hookimpl(wrapper=True)
    def modeopt_restore(self, mode: Any, model: nn.Module, config: Any, metadata: Any, dry_run: bool) -> Any:
        device = next(model.parameters()).device.type
        self.passes.append((mode.name, dry_run, device))
        return (yield)


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    plugin = _Recorder()
    name = mo.register_plugin(plugin, name="dry-run-recorder")
    yield plugin
    mo.unregister_plugin(name)


def test_wrappers_see_the_dry_run_on_meta_then_the_real_pass(tmp_path: Path, recorder: _Recorder) -> None:
    path = tmp_path / "plain.safetensors"
    mo.save(mo.apply_mode(nn.Sequential(nn.Linear(3, 3)), "dry_plain"), path)
    mo.restore(nn.Sequential(nn.Linear(3, 3)), path)
    assert recorder.passes == [("dry_plain", True, "meta"), ("dry_plain", False, "cpu")]


def test_a_mode_that_needs_data_skips_the_dry_run_silently(
    tmp_path: Path, recorder: _Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modeopt_core.checkpoint")
    torch.manual_seed(0)
    model = mo.apply_mode(nn.Sequential(nn.Linear(3, 3)), "dry_reads_weights")
    path = tmp_path / "reads.safetensors"
    mo.save(model, path)
    fresh = nn.Sequential(nn.Linear(3, 3))
    restored = mo.restore(fresh, path)
    assert recorder.passes == [("dry_reads_weights", False, "cpu")]
    assert "dry-run" not in caplog.text and "WARNING" not in caplog.text
    assert torch.equal(restored[0].weight, model[0].weight)


def test_a_misfit_is_still_refused_without_the_dry_run(tmp_path: Path, recorder: _Recorder) -> None:
    path = tmp_path / "reads.safetensors"
    mo.save(mo.apply_mode(nn.Sequential(nn.Linear(3, 3)), "dry_reads_weights"), path)
    wrong = nn.Sequential(nn.Linear(3, 4))
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(mo.CheckpointError, match="does not fit this model"):
        mo.restore(wrong, path)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
    assert mo.applied_modes(wrong) == []
