"""Messages that name the fix: misspelled rule keys, loose types, bad assignments, inputs the model rejects,
models the analysis cannot trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_fastnas import FastNASConfig, prune
from tests.fastnas._models import INPUT_SHAPE, WidthScore, tiny_cnn


def test_a_misspelled_rule_key_gets_a_did_you_mean() -> None:
    with pytest.raises(mo.ConfigError) as err:
        mo.validate_config(FastNASConfig, {"nn.Conv2d": {"chanel_ratio": 8}})
    text = str(err.value)
    assert "unknown key 'chanel_ratio', did you mean 'channels_ratio'?" in text
    assert "valid dictionary" not in text  # not blamed on the valid keys
    with pytest.raises(mo.ConfigError, match="unknown key 'chanel_divisor', did you mean 'channel_divisor'"):
        mo.validate_config(FastNASConfig, {"nn.Conv2d": {"channels_ratio": [0.5, 1.0], "chanel_divisor": 8}})
    with pytest.raises(mo.ConfigError, match=r"nn\.Conv2d\.\*\.chanel_ratio: unknown key 'chanel_ratio', did you "
                                             r"mean 'channels_ratio'\? accepted keys of a nn\.Conv2d rule are"):
        mo.validate_config(FastNASConfig, {"nn.Conv2d": {"*": {"chanel_ratio": [0.5]}}})
    with pytest.raises(mo.ConfigError, match="unknown key 'nn.conv2d', did you mean 'nn.Conv2d'"):
        mo.validate_config(FastNASConfig, {"nn.conv2d": {}})


@pytest.mark.parametrize("rule", [{"channel_divisor": "8"}, {"channel_divisor": True}, {"channel_divisor": 8.0},
                                  {"min_width_steps": "2"}, {"channels_ratio": ["0.5", 1.0]},
                                  {"channels_ratio": [True, 1.0]}])
def test_rule_numbers_are_strict(rule: dict[str, object]) -> None:
    with pytest.raises(mo.ConfigError, match="valid (integer|number)"):
        mo.validate_config(FastNASConfig, {"nn.Conv2d": rule})


def test_lists_from_json_still_read_as_tuples() -> None:
    cfg = mo.validate_config(FastNASConfig, {"nn.Conv2d": {"channels_ratio": [0.5, 1], "channel_divisor": 4}})
    assert cfg.rule_for("nn.Conv2d", "x")["channels_ratio"] == (0.5, 1.0)  # type: ignore[index]
    assert mo.validate_config(FastNASConfig, cfg.dump()).dump() == cfg.dump()


def test_a_bad_assignment_is_a_config_error() -> None:
    cfg = FastNASConfig()
    with pytest.raises(mo.ConfigError, match=r"invalid FastNASConfig:\n  nn\.Conv2d"):
        cfg.nn_conv2d = {"*": {"channel_divisor": 0}}  # type: ignore[assignment]
    with pytest.raises(mo.ConfigError, match="frozen_modules"):
        cfg.frozen_modules = "conv1"  # type: ignore[assignment]
    with pytest.raises(mo.ConfigError, match="unknown key 'frozen_module', did you mean 'frozen_modules'"):
        cfg.frozen_module = ["conv1"]  # type: ignore[attr-defined]


def test_a_dummy_input_the_model_rejects_is_a_search_error_with_torch_s_message() -> None:
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(mo.SearchError, match=r"running the model on dummy_input .*\[1, 5, 8, 8\].* failed: "
                                             r"RuntimeError: .*channels.*Pass a dummy_input the model accepts"):
        prune(model, {"flops": "50%"}, torch.zeros(1, 5, 8, 8), {"score_func": WidthScore({}), "verbose": False})
    assert mo.applied_modes(model) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert INPUT_SHAPE[1] == 3


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = self.c2(x)
        return x


def test_no_searchable_dimension_names_the_trace_error() -> None:
    with pytest.raises(mo.ConvertError) as err:
        mo.apply_mode(_DataDependent(), ["fastnas"])
    text = str(err.value)
    assert "(model) cannot be traced: TraceError: symbolically traced variables cannot be used as inputs to control " \
           "flow" in text
    assert "Frozen: ." not in text
