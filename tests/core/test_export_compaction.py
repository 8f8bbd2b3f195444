"""An export mode compacts the metadata of the mode it closes; restore stays exact (the example plugin's
``sparse_magnitude`` / ``export_sparsity`` pair, registered in-process)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import modeopt_core as mo

EXAMPLE = Path(__file__).parent / "plugin_dists" / "example"


@pytest.fixture(scope="module")
def sparsity_modes() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import modeopt_example_plugin
    finally:
        sys.path.remove(str(EXAMPLE))
    name = mo.register_plugin(modeopt_example_plugin, name="example-inprocess")
    yield
    mo.unregister_plugin(name)
    for module in [m for m in sys.modules if m.startswith("modeopt_example_plugin")]:
        del sys.modules[module]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_export_drops_the_dead_masks_and_restore_is_exact(sparsity_modes: None, tmp_path: Path) -> None:
    model = mo.apply_mode(_mlp(), [("sparse_magnitude", {"sparsity": 0.75})])
    x = torch.randn(8, 16)
    y = model(x)
    masks = mo.modeopt_state(model)["modes"][0]["metadata"]["masks"]
    assert set(masks) == {"0", "2"} and all(isinstance(m, torch.Tensor) for m in masks.values())
    mo.save(model, tmp_path / "masked.safetensors")

    exported = mo.export(model)
    assert mo.applied_modes(exported) == ["sparse_magnitude", "export_sparsity"]
    state = mo.modeopt_state(exported)
    assert state["modes"][0]["metadata"] == {"layers": ["0", "2"]}  # masks gone
    assert type(exported[0]) is nn.Linear and float((exported[0].weight == 0).float().mean()) == pytest.approx(0.75)
    assert torch.equal(exported(x), y)
    path = tmp_path / "exported.safetensors"
    mo.save(exported, path)
    assert [name for name, _ in mo.inspect_checkpoint(path).modes] == ["sparse_magnitude", "export_sparsity"]
    # the masks (512 + 128 bools) are not stored any more
    assert path.stat().st_size < (tmp_path / "masked.safetensors").stat().st_size

    restored = mo.restore(_mlp(), path)
    assert mo.applied_modes(restored) == ["sparse_magnitude", "export_sparsity"]
    assert torch.equal(restored(x), y)
    # the un-exported checkpoint still restores with its masks
    again = mo.restore(_mlp(), tmp_path / "masked.safetensors")
    assert torch.equal(again(x), y)


def test_a_compaction_hook_returning_junk_rolls_the_export_back(sparsity_modes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    model = mo.apply_mode(_mlp(), ["sparse_magnitude"])
    export_mode = mo.get_mode("export_sparsity")
    monkeypatch.setattr(type(export_mode), "compact_closed_metadata", lambda self, closed, own: ["not", "a", "dict"])
    with pytest.raises(mo.ConvertError, match="compact_closed_metadata must return a dict or None"):
        mo.export(model)
    assert mo.applied_modes(model) == ["sparse_magnitude"]
    assert "masks" in mo.modeopt_state(model)["modes"][0]["metadata"]
    assert type(model[0]).__name__ == "_MaskedLinear"
