"""The code examples in the docs run and do what the text says."""

from __future__ import annotations

import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch import nn

import modeopt_core as mo
from modeopt_core.cli import main

DOCS = Path(__file__).parents[2] / "docs"
EXAMPLE_DIST = Path(__file__).parents[1] / "core" / "plugin_dists" / "example"


def _block(page: str, marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)
    (found,) = [b for b in blocks if marker in b]
    return found


def _as_module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, f"<docs {name}>", "exec"), module.__dict__)
    return module


@pytest.fixture
def example_plugin() -> Iterator[types.ModuleType]:
    """The example distribution's package, registered in-process (its pip-installed form is tested in tests/core)."""
    sys.path.insert(0, str(EXAMPLE_DIST))
    try:
        import modeopt_example_plugin
    finally:
        sys.path.remove(str(EXAMPLE_DIST))
    name = mo.register_plugin(modeopt_example_plugin, name="docs-example")
    yield modeopt_example_plugin
    mo.unregister_plugin(name)


def test_concepts_convert_timer_logs_each_convert(example_plugin: types.ModuleType,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="convert_timer")
    _as_module("docs_convert_timer", _block("concepts.md", "class ConvertTimer"))  # registers itself
    try:
        mo.apply_mode(nn.Sequential(nn.Linear(2, 2)), "halve_linear")
    finally:
        mo.unregister_plugin("convert-timer")
    (record,) = [r for r in caplog.records if r.name == "convert_timer"]
    assert re.fullmatch(r"halve_linear took \d+\.\d{3} s", record.getMessage())


def test_plugin_guide_veto_wrapper_rolls_back(example_plugin: types.ModuleType) -> None:
    veto = _as_module("docs_veto", _block("writing-a-plugin.md", "needs at least one nn.Linear"))
    mo.register_plugin(veto, name="docs-veto")
    try:
        no_linear = nn.Sequential(nn.ReLU())
        with pytest.raises(mo.ConvertError, match="halve_linear needs at least one nn.Linear"):
            mo.apply_mode(no_linear, "halve_linear")
        assert mo.applied_modes(no_linear) == []
        assert mo.applied_modes(mo.apply_mode(nn.Sequential(nn.Linear(2, 2)), "halve_linear")) == ["halve_linear"]
    finally:
        mo.unregister_plugin("docs-veto")


def test_plugin_guide_command_is_added(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _as_module("docs_commands", _block("writing-a-plugin.md", "modeopt_register_commands"))
    mo.register_plugin(commands, name="docs-commands")
    try:
        assert main(["halve", "some.safetensors", "--factor", "0.25"]) == 0
        assert main(["--help"]) == 0
    finally:
        mo.unregister_plugin("docs-commands")
    assert "halve" in capsys.readouterr().out


def test_plugin_guide_restore_timer_logs_the_real_pass_only(example_plugin: types.ModuleType, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="restore_timer")
    timer = _as_module("docs_restore_timer", _block("writing-a-plugin.md", "if not dry_run"))
    path = tmp_path / "halved.safetensors"
    mo.save(mo.apply_mode(nn.Sequential(nn.Linear(2, 2)), "halve_linear"), path)
    mo.register_plugin(timer, name="docs-restore-timer")
    try:
        mo.restore(nn.Sequential(nn.Linear(2, 2)), path)
    finally:
        mo.unregister_plugin("docs-restore-timer")
    (record,) = [r for r in caplog.records if r.name == "restore_timer"]  # the dry run is not logged
    assert re.fullmatch(r"restored halve_linear in \d+\.\d{3} s", record.getMessage())


def test_coming_from_modelopt_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _as_module("docs_from_modelopt", _block("coming-from-modelopt.md", "from modeopt_fastnas import OutputAgreement"))
    out = capsys.readouterr().out
    assert re.fullmatch(r"FLOPs \d+\.\d%, \d+ score evaluations\n", out), out
    assert (tmp_path / "pruned.safetensors").is_file() and (tmp_path / "search.safetensors").is_file()


def test_distill_guide_flow_trains_saves_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    page = _as_module("docs_distill_flow", _block("distill.md", 'mo.save(student, "distilling.safetensors")'))
    assert page.losses[-1] < 0.8 * page.losses[0]  # the distilled student learns
    assert mo.applied_modes(page.student) == ["kd_loss", "export_student"] and type(page.student) is nn.Sequential
    mid = mo.restore(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), tmp_path / "distilling.safetensors")
    assert mo.applied_modes(mid) == ["kd_loss"] and "modeopt_kd_adapter1_weight" in mid.state_dict()
    x = page.torch.randn(3, 16)
    assert page.torch.equal(mid(x), page.student(x))
    done = mo.restore(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), tmp_path / "student.safetensors")
    assert list(done.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert "['kd_loss', 'export_student'] loss" in capsys.readouterr().out


def test_distill_guide_chain_with_fastnas(capsys: pytest.CaptureFixture[str]) -> None:
    page = _as_module("docs_distill_chain", _block("distill.md", "stands in for mo.search"))
    assert mo.applied_modes(page.model) == ["fastnas", "kd_loss", "export_student", "export_nas"]
    assert "export_nas" in capsys.readouterr().out


def test_hugging_face_guide_prunes_exports_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    page = _as_module("docs_hf_guide", _block("architectures.md", "LanguageModelScore(random_tokens"))
    out = capsys.readouterr().out
    params, hidden = re.search(r"params (\d+\.\d)%, \d+ score evaluations\n(\d+) \d+ \d+\n", out).groups()  # type: ignore[union-attr]
    assert float(params) <= 50.0 and int(hidden) == page.reloaded.config.hidden_size
    ids = page.dummy
    import torch

    with torch.no_grad():
        assert torch.allclose(page.reloaded(ids).logits, page.pruned(ids).logits, atol=1e-5)
    restored = mo.restore(page.transformers.LlamaForCausalLM(page.config), tmp_path / "llama-pruned.safetensors")
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, page.pruned(ids).logits)
