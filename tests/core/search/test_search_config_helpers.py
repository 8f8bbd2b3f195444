from __future__ import annotations

import math

import pytest
import torch

from modeopt_core.errors import ConfigError
from modeopt_core.search_config import (
    candidate_key,
    check_float,
    check_known_keys,
    describe_value,
    fingerprint_diff,
    json_part,
)


@pytest.mark.parametrize("value", [0.0, 0.5, 1, 1.0])
def test_check_float_accepts_numbers_in_bounds(value: float) -> None:
    check_float({"p": value}, "p", minimum=0.0, maximum=1.0)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_check_float_rejects_out_of_bounds_and_non_numbers(value: object) -> None:
    with pytest.raises(ConfigError, match=r"mutation_prob=.* expected a finite number in \[0.0, 1.0\]"):
        check_float({"mutation_prob": value}, "mutation_prob", minimum=0.0, maximum=1.0)
    check_float({"p": None}, "p", allow_none=True)


def test_check_known_keys_without_close_match_lists_accepted() -> None:
    with pytest.raises(ConfigError, match=r"\['zzz'\] for S; accepted keys: \['alpha', 'beta'\]$"):
        check_known_keys({"zzz": 1, "alpha": 2}, ["beta", "alpha"], "S")
    check_known_keys({"alpha": 1}, ["alpha"], "S")


def test_candidate_key_is_order_independent_and_rejects_non_json() -> None:
    assert candidate_key({"a": 1, "b": 2}) == candidate_key({"b": 2, "a": 1})
    assert candidate_key({"a": 1}) != candidate_key({"a": 2})
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        candidate_key({"a": torch.ones(1)})
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        candidate_key({"a": math.nan})


def test_fingerprint_helpers() -> None:
    config = {"seed": 1, "score_func": len, "ratios": (0.5, 1.0), "checkpoint": "x", "nested": {"k": [1]}}
    assert json_part(config, exclude=["checkpoint"]) == {"nested": {"k": [1]}, "ratios": [0.5, 1.0], "seed": 1}
    assert describe_value((torch.ones(2, 3), {"mask": torch.zeros(1, dtype=torch.bool)}, 4, object())) == [
        {"tensor": [2, 3], "dtype": "torch.float32"},
        {"mask": {"tensor": [1], "dtype": "torch.bool"}},
        4,
        {"type": "object"},
    ]
    old = {"config": {"seed": 1, "a": 2}, "x": 1}
    new = {"config": {"seed": 2}, "x": 1, "y": 3}
    assert fingerprint_diff(old, new) == ["config.a: 2 -> '<missing>'", "config.seed: 1 -> 2", "y: '<missing>' -> 3"]
