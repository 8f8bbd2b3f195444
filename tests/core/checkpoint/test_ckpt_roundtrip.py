from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modeopt_core as mo
from modeopt_core._reader import read_header
from modeopt_core.checkpoint import inspect_checkpoint, restore, save
from tests.core.checkpoint.ckpt_helpers import (
    Locked,
    SharedBlock,
    TiedLM,
    WithExtraState,
    assert_same,
    state_dict_copy,
    trees,
)


def assert_weights_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert_same(sa[k], sb[k], k)


def test_plain_model_without_modes(tmp_path: Path, tiny: nn.Module) -> None:
    path = tmp_path / "m.safetensors"
    save(tiny, path)
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    out = restore(fresh, path)
    assert out is fresh and mo.applied_modes(out) == []
    assert_weights_equal(tiny, out)
    meta = read_header(path).metadata
    assert meta["format"] == "modeopt" and meta["format_version"] == "1"
    assert mo.modeopt_state(out)["modes"] == []


def test_torchvision_model_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    with torch.no_grad():  # make the BN statistics non-trivial
        model.train()(torch.randn(2, 3, 64, 64))
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    path = tmp_path / "mnv3.safetensors"
    save(model, path)
    torch.manual_seed(123)
    fresh = torchvision.models.mobilenet_v3_small(weights=None).eval()
    assert not torch.allclose(fresh(x), ref)
    restored = restore(fresh, path)
    assert_weights_equal(model, restored)
    assert torch.equal(restored(x), ref)
    info = inspect_checkpoint(path)
    assert info.intact and info.num_tensors == len(model.state_dict()) and info.modes == []
    assert info.model_class == "torchvision.models.mobilenetv3.MobileNetV3"


def test_modes_and_weights_roundtrip(tmp_path: Path, toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, [("toy_scale", {"factor": 3.0}), ("toy_tag", {"tag": "hello"})])
    x = torch.randn(5, 4)
    ref = model(x)
    state = mo.modeopt_state(model)
    path = tmp_path / "m.safetensors"
    save(model, path)
    torch.manual_seed(9)
    restored = restore(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), path)
    assert mo.applied_modes(restored) == ["toy_scale", "toy_tag"]
    assert restored.modeopt_tag == "hello"
    assert torch.equal(restored(x), ref)
    assert_same(state, mo.modeopt_state(restored))
    assert restored.factor == 3.0 and isinstance(restored.factor, float)
    info = inspect_checkpoint(path)
    assert [n for n, _ in info.modes] == ["toy_scale", "toy_tag"]
    assert info.modes[0][1] == {"factor": 3.0}
    assert info.plugin_versions == {"toy_scale": ("<unregistered>", ""), "toy_tag": ("<unregistered>", "")}


def test_mode_that_changes_shapes(tmp_path: Path, ckpt_modes: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    model = mo.apply_mode(model, [("ckpt_shrink", {"target": "2", "out_features": 2})])
    with torch.no_grad():
        model[2].weight.normal_()
    path = tmp_path / "m.safetensors"
    save(model, path)
    fresh = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    restored = restore(fresh, path)
    assert restored[2].out_features == 2
    assert_weights_equal(model, restored)
    assert mo.modeopt_state(restored)["modes"][0]["metadata"] == {"kept": (0, 1)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=trees(), seed=st.integers(0, 2**16), width=st.integers(1, 6))
def test_state_and_weights_roundtrip_property(tmp_path: Path, ckpt_modes: str, payload: Any, seed: int, width: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width))
    model = mo.apply_mode(model, "ckpt_payload", mode_kwargs={"payload": payload})
    state = mo.modeopt_state(model)
    path = tmp_path / "p.safetensors"
    save(model, path)
    restored = restore(nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width)), path)
    assert_same(state, mo.modeopt_state(restored))
    assert_same(payload, restored.payload_seen)
    assert_weights_equal(model, restored)


def test_tied_embedding_and_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    path = tmp_path / "lm.safetensors"
    save(model, path)
    header = read_header(path)
    assert "embed.weight" in header.tensors and "head.weight" not in header.tensors
    info = inspect_checkpoint(path)
    assert info.num_aliases == 1 and info.num_tensors == 3
    fresh = TiedLM()
    restored = restore(fresh, path)
    assert restored.head.weight is restored.embed.weight
    assert torch.equal(restored.embed.weight, model.embed.weight)
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(restored(idx), model(idx))


def test_module_registered_twice(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SharedBlock()
    path = tmp_path / "s.safetensors"
    save(model, path)
    assert inspect_checkpoint(path).num_aliases == 2
    assert "second.weight" not in read_header(path).tensors
    restored = restore(SharedBlock(), path)
    assert restored.first is restored.second
    assert restored.second.weight.data_ptr() == restored.first.weight.data_ptr()
    assert_weights_equal(model, restored)


def test_tensors_sharing_memory_in_other_ways(tmp_path: Path) -> None:
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.randn(4, 6)
            self.register_buffer("full", base)
            self.register_buffer("row", base[1])  # overlapping, not identical: stored apart
            self.lin = nn.Linear(6, 4)
            self.lin.weight = nn.Parameter(torch.randn(6, 4).t())  # non-contiguous

    torch.manual_seed(0)
    model = Views()
    path = tmp_path / "v.safetensors"
    save(model, path)
    restored = restore(Views(), path)
    assert_weights_equal(model, restored)
    assert read_header(path).tensors.keys() == {"full", "row", "lin.weight", "lin.bias"}


def test_extra_state_buffers_and_dtypes(tmp_path: Path) -> None:
    model = WithExtraState()
    model.info = {"steps": 7, "window": (5, 1), 3: [1.5, None]}
    model.register_buffer("counter", torch.tensor(4, dtype=torch.int64))
    model.register_buffer("scratch", torch.ones(3), persistent=False)
    model.half_lin = nn.Linear(2, 2).to(torch.bfloat16)
    path = tmp_path / "e.safetensors"
    save(model, path)
    fresh = WithExtraState()
    fresh.register_buffer("counter", torch.tensor(0, dtype=torch.int64))
    fresh.register_buffer("scratch", torch.zeros(3), persistent=False)
    fresh.half_lin = nn.Linear(2, 2).to(torch.bfloat16)
    restored = restore(fresh, path)
    assert_same(restored.info, {"steps": 7, "window": (5, 1), 3: [1.5, None]})
    assert int(restored.counter) == 4 and torch.equal(restored.scratch, torch.zeros(3))
    assert restored.half_lin.weight.dtype == torch.bfloat16
    assert_weights_equal(model, restored)


def test_data_parallel_is_unwrapped(tmp_path: Path, toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_tag")
    path = tmp_path / "dp.safetensors"
    save(nn.DataParallel(model), path)
    assert "module.0.weight" not in read_header(path).tensors
    wrapped = nn.DataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    restored = restore(wrapped, path)
    assert not isinstance(restored, nn.DataParallel)
    assert mo.applied_modes(restored) == ["toy_tag"]
    assert_weights_equal(model, restored)


def test_mode_restore_that_needs_real_weights(tmp_path: Path, ckpt_modes: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modeopt_core.checkpoint")
    torch.manual_seed(0)
    model = mo.apply_mode(nn.Sequential(nn.Linear(3, 3)), "ckpt_needs_data")
    path = tmp_path / "n.safetensors"
    save(model, path)
    fresh = nn.Sequential(nn.Linear(3, 3))
    restored = restore(fresh, path)  # the meta-device check cannot run this mode; the guarded path does
    assert isinstance(restored.extra, nn.Linear)
    assert "dry-run restore on a data-less (meta) copy failed" in caplog.text
    assert "supports_meta_restore = False" in caplog.text
    assert_weights_equal(model, restored)


def test_model_that_cannot_be_deep_copied(tmp_path: Path, toy_modes: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modeopt_core.checkpoint")
    torch.manual_seed(0)
    model = mo.apply_mode(Locked(), "toy_tag")
    path = tmp_path / "l.safetensors"
    save(model, path)
    restored = restore(Locked(), path)
    assert restored.modeopt_tag == "x"
    assert "cannot build a data-less copy" in caplog.text
    assert_weights_equal(model, restored)


def test_save_overwrites_and_restore_returns_latest(tmp_path: Path, tiny: nn.Module) -> None:
    path = tmp_path / "m.safetensors"
    save(tiny, path)
    with torch.no_grad():
        tiny[0].weight.add_(1)
    expected = state_dict_copy(tiny)
    save(tiny, path)
    restored = restore(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), path)
    assert torch.equal(restored[0].weight, expected["0.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_model_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    model = nn.Linear(5, 5).to(dtype)
    save(model, tmp_path / "d.safetensors")
    restored = restore(nn.Linear(5, 5).to(dtype), tmp_path / "d.safetensors")
    assert_weights_equal(model, restored)


class Renaming(nn.Module):
    """Renames a key in its state dict (and back on load), like modules with custom serialization."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self._register_state_dict_hook(self._rename_out)
        self.register_load_state_dict_pre_hook(self._rename_in)

    @staticmethod
    def _rename_out(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        state_dict[prefix + "w_renamed"] = state_dict.pop(prefix + "lin.weight")

    @staticmethod
    def _rename_in(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + "w_renamed" in state_dict:
            state_dict[prefix + "lin.weight"] = state_dict.pop(prefix + "w_renamed")


def test_models_that_rename_state_dict_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modeopt_core._model_io")
    torch.manual_seed(0)
    model = Renaming()
    save(model, tmp_path / "r.safetensors")
    assert "w_renamed" in read_header(tmp_path / "r.safetensors").tensors
    restored = restore(Renaming(), tmp_path / "r.safetensors")
    assert torch.equal(restored.lin.weight, model.lin.weight) and torch.equal(restored.lin.bias, model.lin.bias)
    assert "loading all tensors at once" in caplog.text
