"""The ``autonas`` -> ``export_nas`` chain, wrong orders, and save/restore at every stage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_core.checkpoint import restore, save
from modeopt_core.errors import ConvertError, ModeChainError

from ._nas_helpers import DUMMY, SMALL_WIDTHS, digits_batches, fresh, supernet, train_steps

X = digits_batches(1, 32, offset=1000)[0][0]


def _trained() -> nn.Module:
    model = supernet()
    train_steps(model, digits_batches(6, 32))
    return model


def _roundtrip(model: nn.Module, path: Path) -> nn.Module:
    save(model, path)
    restored = restore(fresh(SMALL_WIDTHS), path)
    restored.eval()
    return restored


def test_autonas_then_export_nas() -> None:
    model = supernet()
    assert mo.applied_modes(model) == ["autonas"]
    # widths (8, 16, 32), divisor 8: 8-wide layers are fixed, 16 -> {8, 16}, 32 -> {16, 24, 32}
    # layer1's two identical blocks may each be dropped (keep {0, 1} x 2); layer2, layer3: trailing depth
    # {1, 2} (their first block downsamples) x 3 searchable widths each
    assert mtn.search_space_size(model) == 2**2 * (2 * 2**3) * (2 * 3**3)
    exported = mo.export(model)
    assert mo.applied_modes(exported) == ["autonas", "export_nas"]
    assert not any(type(m).__name__.startswith("Dynamic") for m in exported.modules())


@pytest.mark.parametrize(
    ("applied", "new", "message"),
    [
        ([], ["export_nas"], "no mode is waiting for an export"),
        (["autonas"], ["autonas"], "cannot apply 'autonas' after 'autonas'"),
        (["autonas", "export_nas"], ["export_nas"], "no mode is waiting for an export"),
    ],
)
def test_wrong_orders_are_rejected_with_a_clear_message(applied: list[str], new: list[str], message: str) -> None:
    torch.manual_seed(0)
    from modeopt_fastnas.digits import DigitsResNet

    model = mo.apply_mode(DigitsResNet(SMALL_WIDTHS), applied) if applied else DigitsResNet(SMALL_WIDTHS)
    before = mo.applied_modes(model)
    with pytest.raises(ModeChainError, match=message):
        mo.apply_mode(model, new)
    assert mo.applied_modes(model) == before


def test_exported_model_cannot_be_searched_or_sampled() -> None:
    model = mo.export(supernet())
    with pytest.raises(ConvertError, match="already exported"):
        mo.search(model, {"flops": "60%"}, DUMMY, {"score_func": lambda m: 0.0, "calibrate_bn": False})
    with pytest.raises(ConvertError, match="already exported"):
        mtn.sample(model)


def test_restore_max_subnet_after_training(tmp_path: Path) -> None:
    model = _trained()
    mtn.recalibrate_bn(model, digits_batches(8, 32))
    model.eval()
    expected = model(X)
    restored = _roundtrip(model, tmp_path / "max.safetensors")
    assert mo.applied_modes(restored) == ["autonas"]
    assert mtn.get_subnet_config(restored) == mtn.get_subnet_config(model)
    assert torch.equal(restored(X), expected)
    # the restored supernet trains like the original: it samples subnets again
    configs = set()
    restored.train()
    space = mtn.get_search_space(restored)
    for _ in range(4):
        restored(X)
        configs.add(tuple(space.config().values()))
    assert len(configs) > 1


def test_restore_random_subnet(tmp_path: Path) -> None:
    model = _trained()
    chosen = mtn.sample(model, "random", seed=9)
    mtn.recalibrate_bn(model, digits_batches(8, 32))
    model.eval()
    expected = model(X)
    restored = _roundtrip(model, tmp_path / "random.safetensors")
    assert mtn.get_subnet_config(restored) == chosen
    assert torch.equal(restored(X), expected)
    assert mtn.get_search_space(restored).structure == mtn.get_search_space(model).structure


def test_restore_exported_subnet(tmp_path: Path) -> None:
    model = _trained()
    mtn.sample(model, "random", seed=10)
    mtn.recalibrate_bn(model, digits_batches(8, 32))
    exported = mo.export(model)
    exported.eval()
    expected = exported(X)
    restored = _roundtrip(exported, tmp_path / "exported.safetensors")
    assert mo.applied_modes(restored) == ["autonas", "export_nas"]
    assert [type(m) for m in restored.modules()] == [type(m) for m in exported.modules()]
    assert {k: v.shape for k, v in restored.state_dict().items()} == {
        k: v.shape for k, v in exported.state_dict().items()
    }
    assert torch.equal(restored(X), expected)


def test_restore_onto_another_model_class_is_refused(tmp_path: Path) -> None:
    save(supernet(), tmp_path / "s.safetensors")
    other = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(mo.ModeoptError):
        restore(other, tmp_path / "s.safetensors")
    assert mo.applied_modes(other) == [] and type(other[0]) is nn.Conv2d


class _DistillMode(mo.ModeDescriptor):
    """A stand-in third-party mode that works on a search-space model."""

    name = "toy_distill"  # type: ignore[assignment]
    config_class = mo.ModeConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: mo.ModeConfig, **kw: object) -> tuple[nn.Module, dict]:
        return model, {}

    def restore(self, model: nn.Module, config: mo.ModeConfig, metadata: dict) -> nn.Module:
        return model


class _DistillPlugin:
    @mo.hookimpl
    def modeopt_register_modes(self, register: object) -> None:
        register(_DistillMode())  # type: ignore[operator]

    @mo.hookimpl
    def modeopt_autonas_next_modes(self) -> list[str]:
        return ["toy_distill"]


def test_third_party_mode_may_follow_autonas_once_its_plugin_opens_the_chain() -> None:
    model = supernet()
    with pytest.raises(mo.ModeNotFoundError):
        mo.apply_mode(model, "toy_distill")
    mo.register_plugin(_DistillPlugin(), name="toy-distill")
    try:
        assert "toy_distill" in mo.get_mode("autonas").next_modes  # type: ignore[operator]
        model = mo.apply_mode(model, "toy_distill")
        model = mo.export(model)  # the un-exported autonas still waits for export_nas
        assert mo.applied_modes(model) == ["autonas", "toy_distill", "export_nas"]
    finally:
        mo.unregister_plugin("toy-distill")
    assert "toy_distill" not in mo.get_mode("autonas").next_modes  # type: ignore[operator]


def test_chain_error_names_only_available_modes_and_the_hook() -> None:
    model = mo.apply_mode(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1)), ["fastnas"])
    with pytest.raises(ModeChainError) as info:
        mo.apply_mode(model, "autonas")
    text = str(info.value)
    listed = ast.literal_eval(re.search(r"only (\[.*?\]) may follow it", text).group(1))  # type: ignore[union-attr]
    assert "export_nas" in listed and set(listed) <= set(mo.list_modes())  # nothing a plugin does not provide
    assert "quantize" not in text and "sparse_gpt" not in text
    assert "modeopt_autonas_next_modes" in text
