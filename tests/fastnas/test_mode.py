"""The fastnas mode: registration, convert/restore, no training-time sampling, chaining rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_fastnas import BinarySearcher, FastNASConfig, FastNASMode
from tests.fastnas._models import INPUT_SHAPE, tiny_cnn


def test_fastnas_is_registered_by_the_installed_plugin() -> None:
    assert "fastnas" in mo.list_modes()
    mode = mo.get_mode("fastnas")
    assert isinstance(mode, FastNASMode)
    assert mode.config_class is FastNASConfig
    assert mode.export_mode == "export_nas"
    assert mode.search_algorithm is BinarySearcher
    assert mo.mode_provider("fastnas")[0] == "modeopt-fastnas"  # the distribution


def test_convert_records_structure_and_subnet_and_keeps_the_function() -> None:
    model = tiny_cnn()
    x = torch.randn(4, *INPUT_SHAPE[1:])
    before = model(x)
    model = mo.apply_mode(model, ["fastnas"])
    assert torch.allclose(model(x), before, atol=1e-6)
    (entry,) = mo.modeopt_state(model)["modes"]
    assert entry["name"] == "fastnas"
    assert set(entry["metadata"]) == {"model_class", "structure", "subnet"}
    assert entry["metadata"]["subnet"] == {"conv1.out_channels": 16, "conv2.out_channels": 32, "conv3.out_channels": 64}


def test_training_a_converted_model_does_not_sample_subnets() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    space = get_search_space(model)
    space.select({"conv1.out_channels": 8, "conv2.out_channels": 16, "conv3.out_channels": 24})
    chosen = space.config()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, *INPUT_SHAPE[1:])).sum().backward()
        opt.step()
    assert space.config() == chosen
    assert model.conv2.out_channels == 16


def test_state_restores_onto_a_fresh_model_with_the_same_subnet_and_outputs() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas"])
    get_search_space(model).select({"conv1.out_channels": 4, "conv2.out_channels": 32, "conv3.out_channels": 40})
    state = mo.modeopt_state(model)
    fresh = mo.restore_from_modeopt_state(tiny_cnn(), state)
    fresh.load_state_dict(model.state_dict())
    assert get_search_space(fresh).config() == get_search_space(model).config()
    x = torch.randn(2, *INPUT_SHAPE[1:])
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


def test_export_nas_may_follow_but_an_unrelated_mode_may_not() -> None:
    model = mo.apply_mode(tiny_cnn(), ["fastnas", "export_nas"])
    assert mo.applied_modes(model) == ["fastnas", "export_nas"]
    assert type(model.conv1) is nn.Conv2d
    with pytest.raises(mo.ModeChainError, match="fastnas"):
        mo.apply_mode(tiny_cnn(), ["fastnas", "autonas"])


class _Tag(mo.ModeDescriptor):
    """A third-party mode that records a tag (stands for distillation or quantization)."""

    @property
    def name(self) -> str:
        return "fastnas_test_tag"

    @property
    def config_class(self) -> type[mo.ModeConfig]:
        return mo.ModeConfig

    def convert(self, model: nn.Module, config: mo.ModeConfig, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return model, {}

    def restore(self, model: nn.Module, config: mo.ModeConfig, metadata: dict[str, Any]) -> nn.Module:
        return model


class _TagPlugin:
    @mo.hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(_Tag())

    @mo.hookimpl
    def modeopt_autonas_next_modes(self) -> list[str]:
        return ["fastnas_test_tag"]


@pytest.fixture
def tag_plugin() -> Iterator[None]:
    name = mo.register_plugin(_TagPlugin(), name="fastnas-test-tag")
    yield
    mo.unregister_plugin(name)


def test_third_party_modes_join_next_modes_through_the_autonas_hook(tag_plugin: None) -> None:
    assert "fastnas_test_tag" in mo.get_mode("fastnas").next_modes
    model = mo.apply_mode(tiny_cnn(), ["fastnas", "fastnas_test_tag"])
    assert mo.applied_modes(model) == ["fastnas", "fastnas_test_tag"]
    model = mo.export(model)
    assert mo.applied_modes(model) == ["fastnas", "fastnas_test_tag", "export_nas"]


def test_without_the_hook_the_third_party_mode_is_refused() -> None:
    name = mo.register_plugin(type("OnlyMode", (), {"modeopt_register_modes": _TagPlugin.modeopt_register_modes})(),
                              name="fastnas-test-only-mode")
    try:
        with pytest.raises(mo.ModeChainError, match="fastnas_test_tag"):
            mo.apply_mode(tiny_cnn(), ["fastnas", "fastnas_test_tag"])
    finally:
        mo.unregister_plugin(name)
