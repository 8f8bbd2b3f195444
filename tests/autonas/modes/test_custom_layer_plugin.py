"""A third-party layer made searchable by a plugin through the ``modeopt_autonas_register_layers`` hook."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_autonas.space import LAYERS
from modeopt_core import restore, save
from tests.autonas._custom_layer import SCALED_LINEAR, ScaledLinear


class ScaledMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = ScaledLinear(6, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def scaled_linear_plugin() -> Iterator[None]:
    """A plugin module as a third party would ship it (normally found through its entry point)."""
    plugin = types.ModuleType("scaled_linear_plugin")

    @mo.hookimpl
    def modeopt_autonas_register_layers(register: Any) -> None:
        register(SCALED_LINEAR)

    plugin.modeopt_autonas_register_layers = modeopt_autonas_register_layers  # type: ignore[attr-defined]
    name = mo.register_plugin(plugin, name="scaled-linear")
    yield
    mo.unregister_plugin(name)
    LAYERS.unregister(ScaledLinear)


def test_without_the_plugin_the_custom_layer_is_frozen() -> None:
    torch.manual_seed(0)
    model = ScaledMLP()
    with pytest.raises(mo.ConvertError, match="no searchable dimension"):
        mo.apply_mode(model, ["autonas"])
    assert type(model.fc1) is ScaledLinear and mo.applied_modes(model) == []


def test_registered_layer_is_searched_trained_exported_and_restored(scaled_linear_plugin: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(ScaledMLP(), ["autonas"])
    assert mtn.get_subnet_config(model) == {"fc1.out_features": 16}
    assert mtn.get_search_space(model).get_hparam("fc1.out_features").choices == (8, 16)
    x = torch.randn(5, 6)
    # supernet training samples the custom layer's width too
    model.train()
    widths = set()
    for _ in range(12):
        model(x)
        widths.add(model.fc1.weight.shape[0])
    assert widths == {8, 16}
    mtn.select(model, {"fc1.out_features": 8})
    model.eval()
    y = model(x)
    assert model.fc1.scale.shape == (8,) and model.fc2.in_features == 8
    exported = mo.export(model)
    assert type(exported.fc1) is ScaledLinear and exported.fc1.weight.shape == (8, 6)
    assert torch.equal(exported(x), y)
    save(exported, tmp_path / "scaled.safetensors")
    torch.manual_seed(1)
    restored = restore(ScaledMLP(), tmp_path / "scaled.safetensors")
    assert torch.equal(restored(x), y)


def test_custom_layer_follows_linear_rules_and_their_globs(scaled_linear_plugin: None) -> None:
    torch.manual_seed(0)
    # fc1 (ScaledLinear) and fc2 (nn.Linear) share the 16-wide group: its widths must suit both rules
    rules = {
        "nn.Linear": {
            "*": {"features_ratio": [0.25, 0.5, 1.0], "feature_divisor": 4},
            "fc1": {"features_ratio": [0.25, 1.0]},
        }
    }
    model = mo.apply_mode(ScaledMLP(), [("autonas", rules)])
    assert mtn.get_search_space(model).get_hparam("fc1.out_features").choices == (4, 16)
    frozen = {"nn.Linear": {"*": {}, "fc1": None}}
    with pytest.raises(mo.ConvertError, match="no searchable dimension"):
        mo.apply_mode(ScaledMLP(), [("autonas", frozen)])


def test_the_docs_plugin_example_registers_a_searchable_layer() -> None:
    """The custom-layer example of docs/writing-a-plugin.md runs as written."""
    import re

    docs = Path(__file__).resolve().parents[3] / "docs" / "writing-a-plugin.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.DOTALL)
    (code,) = [b for b in blocks if "modeopt_autonas_register_layers" in b and "class Dynamic" in b]
    module = types.ModuleType("docs_autonas_plugin")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "<docs/writing-a-plugin.md>", "exec"), module.__dict__)
        name = mo.register_plugin(module, name="docs-autonas-plugin")
        try:
            torch.manual_seed(0)
            model = nn.Sequential(module.Gated(6, 16), nn.ReLU(), nn.Linear(16, 3))
            model = mo.apply_mode(model, ["autonas"])
            assert mtn.get_subnet_config(model) == {"0.out_features": 16}
            assert mtn.get_search_space(model).get_hparam("0.out_features").choices == (8, 16)
            mtn.select(model, {"0.out_features": 8})
            model.eval()
            x = torch.randn(4, 6)
            y = model(x)
            exported = mo.export(model)
            assert type(exported[0]) is module.Gated and exported[0].gate.shape == (8,)
            assert torch.equal(exported(x), y)
        finally:
            mo.unregister_plugin(name)
            LAYERS.unregister(module.Gated)
    finally:
        del sys.modules[module.__name__]
