from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

import modeopt_core as mo


class ConvRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels_ratio: tuple[float, ...] = (0.5, 1.0)
    channel_divisor: int = Field(default=1, ge=1)


Rules = mo.make_rule_config(
    "Rules",
    {"nn.Conv2d": (ConvRule, {"channel_divisor": 8}), "nn.Linear": (ConvRule, None)},
)


def test_defaults_and_simple_rule_wrapping() -> None:
    cfg = Rules()
    assert cfg.rule_for("nn.Conv2d", "layer1.0.conv1") == {"channels_ratio": (0.5, 1.0), "channel_divisor": 8}
    assert cfg.rule_for("nn.Linear", "fc") is None
    assert cfg.dump() == {"nn.Conv2d": {"*": {"channel_divisor": 8}}, "nn.Linear": {"*": None}}


def test_glob_overrides_merge_in_order() -> None:
    cfg = mo.validate_config(
        Rules,
        {
            "nn.Conv2d": {
                "*": {"channel_divisor": 4, "channels_ratio": [0.25, 0.5, 1.0]},
                "*.downsample.*": {"channel_divisor": 16},
                "head.*": None,
                "head.keep": {"channel_divisor": 2},
            }
        },
    )
    assert cfg.rule_for("nn.Conv2d", "layer1.downsample.0") == {"channels_ratio": (0.25, 0.5, 1.0), "channel_divisor": 16}
    assert cfg.rule_for("nn.Conv2d", "head.other") is None
    # a dict after a None starts afresh from the rule's defaults
    assert cfg.rule_for("nn.Conv2d", "head.keep") == {"channels_ratio": (0.5, 1.0), "channel_divisor": 2}


def test_unmatched_module_is_disabled() -> None:
    cfg = mo.validate_config(Rules, {"nn.Conv2d": {"stem*": {}}})
    assert cfg.rule_for("nn.Conv2d", "layer1.conv") is None
    assert cfg.rule_for("nn.Conv2d", "stem.conv") == {"channels_ratio": (0.5, 1.0), "channel_divisor": 1}


def test_errors_name_field_path_and_accepted_values() -> None:
    with pytest.raises(mo.ConfigError, match=r"nn\.Conv2d\.\*\.channel_divisor: .*greater than or equal to 1"):
        mo.validate_config(Rules, {"nn.Conv2d": {"channel_divisor": 0}})
    with pytest.raises(mo.ConfigError, match=r"nn\.Conv3d: unknown key 'nn.Conv3d', did you mean 'nn.Conv2d'\? "
                       r"accepted keys are \['nn.Conv2d', 'nn.Linear'\]"):
        mo.validate_config(Rules, {"nn.Conv3d": {}})
    with pytest.raises(mo.ConfigError, match=r"nn\.Conv2d\.layer\*\.bogus"):
        mo.validate_config(Rules, {"nn.Conv2d": {"layer*": {"bogus": 1}}})
    with pytest.raises(mo.ConfigError, match="expects a dict"):
        mo.validate_config(Rules, [1, 2])


def test_assignment_is_validated() -> None:
    cfg = Rules()
    with pytest.raises(Exception, match="channel_divisor"):
        cfg.nn_conv2d = {"*": {"channel_divisor": -3}}  # type: ignore[assignment]


def test_json_schema_available() -> None:
    schema = Rules.json_schema()
    assert "nn.Conv2d" in schema["properties"]
    json.dumps(schema)


_rule = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "channel_divisor": st.integers(1, 64),
            "channels_ratio": st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=4).map(tuple),
        },
    ),
)


@given(
    st.dictionaries(st.sampled_from(["*", "a.*", "*.b", "a.b", "c*"]), _rule, min_size=1, max_size=4),
    st.sampled_from(["a.b", "a.c", "c.b", "x"]),
)
def test_dump_round_trip_preserves_resolution(patterns: dict, module: str) -> None:
    cfg = mo.validate_config(Rules, {"nn.Conv2d": patterns})
    again = mo.validate_config(Rules, json.loads(json.dumps(cfg.dump())))
    assert again.rule_for("nn.Conv2d", module) == cfg.rule_for("nn.Conv2d", module)
    assert again.dump() == cfg.dump()
