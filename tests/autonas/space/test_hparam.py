"""Hparam: choices, active validation, restriction, and the divisor rounding used by rules."""

from __future__ import annotations

import pytest

from modeopt_autonas.space.errors import HparamValueError, SearchSpaceError
from modeopt_autonas.space.hparam import _EPOCH, Hparam, make_divisible


def test_choices_are_sorted_unique_and_include_original():
    hp = Hparam([8, 4, 8, 2], original=6, name="x")
    assert hp.choices == (2, 4, 6, 8)
    assert (hp.original, hp.active, hp.min, hp.max) == (6, 6, 2, 8)
    assert hp.is_configurable
    assert Hparam([5]).original == 5
    assert not Hparam([5]).is_configurable


def test_original_defaults_to_max():
    assert Hparam([3, 9, 1]).original == 9


@pytest.mark.parametrize("bad", [3, 4.0, True, "4", None])
def test_active_rejects_values_outside_choices(bad):
    hp = Hparam([2, 4, 8], name="layer.out_channels")
    with pytest.raises(HparamValueError, match="layer.out_channels") as info:
        hp.active = bad
    assert isinstance(info.value, SearchSpaceError) and isinstance(info.value, ValueError)
    assert hp.active == 8


def test_active_change_bumps_epoch_only_on_change():
    hp = Hparam([2, 4])
    before = _EPOCH[0]
    hp.active = 4
    assert _EPOCH[0] == before
    hp.active = 2
    assert _EPOCH[0] == before + 1 and hp.active == 2


def test_invalid_construction():
    with pytest.raises(HparamValueError):
        Hparam([])
    with pytest.raises(HparamValueError):
        Hparam([1, 2.5])
    with pytest.raises(HparamValueError):
        Hparam([-1, 2])


def test_restrict_keeps_original_and_active():
    hp = Hparam([1, 2, 3, 4, 5])
    hp.active = 2
    hp.restrict([3])
    assert hp.choices == (2, 3, 5)


@pytest.mark.parametrize(
    ("value", "divisor", "upper", "expected"),
    [
        (12.0, 8, 64, 16),  # nearest multiple (1.5 rounds up)
        (11.0, 8, 64, 8),
        (3.0, 8, 64, 8),  # at least the divisor
        (70.0, 8, 64, 64),  # never above the original width
        (2.0, 8, 4, 4),  # narrow layer: divisor capped by the width
        (0.2, 1, 4, 1),  # never zero channels
        (3.4999999999999996, 1, 10, 4),  # float noise of 0.35 * 10 does not round down
    ],
)
def test_make_divisible(value, divisor, upper, expected):
    assert make_divisible(value, divisor, upper) == expected
