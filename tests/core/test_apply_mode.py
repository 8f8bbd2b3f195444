from __future__ import annotations

import pytest
import torch
from torch import nn

import modeopt_core as mo
from tests.core.toymodes import ScaleMode


def test_apply_records_config_and_metadata(toy_modes: str, tiny: nn.Module) -> None:
    x = torch.randn(3, 4)
    ref = tiny(x)
    model = mo.apply_mode(tiny, [("toy_scale", {"factor": 3.0})])
    assert torch.allclose(model(x), ref * 3)
    state = mo.modeopt_state(model)
    assert [m["name"] for m in state["modes"]] == ["toy_scale"]
    assert state["modes"][0]["config"] == {"factor": 3.0}
    assert state["modes"][0]["metadata"]["shape"] == (1, 2)
    assert mo.applied_modes(model) == ["toy_scale"]


def test_mode_forms_name_descriptor_and_pairs(toy_modes: str, tiny: nn.Module) -> None:
    m1 = mo.apply_mode(nn.Linear(2, 2), "toy_tag")
    m2 = mo.apply_mode(nn.Linear(2, 2), ScaleMode())
    m3 = mo.apply_mode(nn.Linear(2, 2), ("toy_tag", {"tag": "y"}))
    assert mo.applied_modes(m1) == ["toy_tag"] and mo.applied_modes(m2) == ["toy_scale"]
    assert m3.modeopt_tag == "y"


def test_unregistered_descriptor_is_registered_ad_hoc(tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, ScaleMode())
    try:
        assert "toy_scale" in mo.list_modes()
        assert mo.applied_modes(model) == ["toy_scale"]
    finally:
        mo.unregister_plugin("adhoc:toy_scale")


def test_modeopt_state_is_a_copy(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_scale")
    state = mo.modeopt_state(model)
    state["modes"][0]["metadata"]["factor_tensor"].fill_(100.0)
    state["modes"][0]["config"]["factor"] = 9.0
    state["modes"].clear()
    again = mo.modeopt_state(model)
    assert again["modes"][0]["config"] == {"factor": 2.0}
    assert float(again["modes"][0]["metadata"]["factor_tensor"][0]) == 2.0


def test_update_for_save_runs_before_state_is_taken(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_scale")
    assert mo.modeopt_state(model)["modes"][0]["metadata"]["saved"] == 1
    assert mo.modeopt_state(model)["modes"][0]["metadata"]["saved"] == 2


def test_mode_kwargs_are_passed_not_saved(toy_modes: str, tiny: nn.Module) -> None:
    with pytest.raises(mo.ConvertError, match="asked to fail"):
        mo.apply_mode(tiny, "toy_scale", mode_kwargs={"fail": True})
    model = mo.apply_mode(tiny, "toy_scale", mode_kwargs={"fail": False})
    assert "fail" not in str(mo.modeopt_state(model))


def test_failing_convert_rolls_back_model_and_state(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_tag")
    before_state = mo.modeopt_state(model)
    before_keys = set(model.state_dict())
    with pytest.raises(mo.ConvertError, match="broke half-way"):
        mo.apply_mode(model, ("toy_tag", {"tag": "changed"}), mode_kwargs={"fail_after_mutation": True})
    assert model.modeopt_tag == "x"
    assert mo.modeopt_state(model)["modes"] == before_state["modes"]
    assert set(model.state_dict()) == before_keys


def test_failure_in_second_mode_rolls_back_first(toy_modes: str, tiny: nn.Module) -> None:
    with pytest.raises(mo.ConvertError):
        mo.apply_mode(tiny, ["toy_tag", "toy_tag"], mode_kwargs=[{}, {"fail_after_mutation": True}])
    assert not hasattr(tiny, "modeopt_tag")
    assert mo.applied_modes(tiny) == []


def test_unknown_mode_suggests_close_match(toy_modes: str, tiny: nn.Module) -> None:
    with pytest.raises(mo.ModeNotFoundError, match=r"Did you mean 'toy_scale'\?.*Available modes"):
        mo.apply_mode(tiny, "toy_scael")


def test_bad_config_names_field_and_accepted_keys(toy_modes: str, tiny: nn.Module) -> None:
    with pytest.raises(mo.ConfigError, match=r"factor: .*greater than 0"):
        mo.apply_mode(tiny, ("toy_scale", {"factor": -1}))
    with pytest.raises(mo.ConfigError, match=r"unknown key 'factr', did you mean 'factor'\? accepted keys are \['factor'\]"):
        mo.apply_mode(tiny, ("toy_scale", {"factr": 1}))
    assert mo.applied_modes(tiny) == []


def test_dataparallel_is_unwrapped(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(nn.DataParallel(tiny), "toy_tag")
    assert model is tiny and mo.applied_modes(nn.DataParallel(model)) == ["toy_tag"]


def test_restore_from_state_on_fresh_model(toy_modes: str) -> None:
    torch.manual_seed(1)
    model = mo.apply_mode(nn.Linear(4, 2), [("toy_scale", {"factor": 5.0}), ("toy_tag", {"tag": "q"})])
    state = mo.modeopt_state(model)
    fresh = mo.restore_from_modeopt_state(nn.Linear(4, 2), state)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(fresh(x), model(x))
    assert fresh.modeopt_tag == "q"
    assert mo.modeopt_state(fresh)["modes"][1] == state["modes"][1]


def test_restore_refuses_converted_model_and_bad_state(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_tag")
    with pytest.raises(mo.StateError, match="fresh model"):
        mo.restore_from_modeopt_state(model, mo.modeopt_state(model))
    with pytest.raises(mo.StateError, match="'modes' list"):
        mo.restore_from_modeopt_state(nn.Linear(1, 1), {"foo": 1})
    with pytest.raises(mo.ModeNotFoundError):
        mo.restore_from_modeopt_state(nn.Linear(1, 1), {"modes": [{"name": "nope", "config": {}}]})


def test_export_applies_pending_export_mode(toy_modes: str, tiny: nn.Module) -> None:
    x = torch.randn(2, 4)
    ref = tiny(x)
    model = mo.apply_mode(tiny, "toy_scale")
    model = mo.export(model)
    assert torch.allclose(model(x), ref)
    assert mo.applied_modes(model) == ["toy_scale", "toy_unscale"]
    with pytest.raises(mo.ModeoptError, match="nothing to export"):
        mo.export(model)


def test_search_without_searchable_mode_is_clear(toy_modes: str, tiny: nn.Module) -> None:
    model = mo.apply_mode(tiny, "toy_tag")
    with pytest.raises(mo.SearchError, match="no applied mode has a search algorithm"):
        mo.search(model, {}, torch.randn(1, 4))
