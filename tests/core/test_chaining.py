from __future__ import annotations

import pytest
from torch import nn

import modeopt_core as mo


@pytest.mark.parametrize(
    "chain",
    [
        ["toy_scale", "toy_unscale"],
        ["toy_scale", "toy_tag", "toy_unscale"],
        ["toy_tag", "toy_tag"],
        ["toy_scale", "toy_unscale", "toy_scale", "toy_unscale"],
    ],
)
def test_valid_chains(toy_modes: str, chain: list[str]) -> None:
    model = nn.Linear(2, 2)
    for name in chain:
        model = mo.apply_mode(model, name)
    assert mo.applied_modes(model) == chain


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (["toy_unscale"], "no mode is waiting for an export"),
        (["toy_tag", "toy_scale"], "'toy_tag' prohibits it"),
        (["toy_scale", "toy_scale"], r"only \['toy_tag', 'toy_unscale'\] may follow"),
        (["toy_scale", "toy_unscale", "toy_unscale"], "no mode is waiting"),
        # the un-exported scale still constrains what follows the tag
        (["toy_scale", "toy_tag", "toy_scale"], "prohibits it|while waiting for the export"),
    ],
)
def test_invalid_chains_are_rejected_before_any_change(toy_modes: str, chain: list[str], message: str) -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(mo.ModeChainError, match=message):
        mo.apply_mode(model, chain)
    assert mo.applied_modes(model) == []


def test_chain_checked_step_by_step(toy_modes: str) -> None:
    model = mo.apply_mode(nn.Linear(2, 2), "toy_scale")
    model = mo.apply_mode(model, "toy_tag")
    with pytest.raises(mo.ModeChainError, match="while waiting for the export of 'toy_scale'|prohibits"):
        mo.apply_mode(model, "toy_scale")
    assert mo.applied_modes(model) == ["toy_scale", "toy_tag"]
