"""The public functions of modeopt_autonas on converted, exported and plain models."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_core.constraints import ForwardProfiler

from ._nas_helpers import DUMMY, supernet


def test_print_search_space_returns_a_table_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    model = supernet()
    table = mtn.print_search_space(model)
    assert capsys.readouterr() == ("", "")
    assert "layer3.0.conv1.out_channels" in table and "[16, 24, 32]" in table and "3456 subnets" in table and "layer1.0.keep" in table
    assert "frozen stem.0.out_channels" in mtn.print_search_space(model, include_frozen=True)


def test_sample_is_reproducible_with_a_seed_and_select_is_all_or_nothing() -> None:
    model = supernet()
    a = mtn.sample(model, "random", seed=3)
    b = mtn.sample(model, "random", seed=random.Random(3))
    assert a == b == mtn.get_subnet_config(model)
    assert mtn.sample(model, "min") == {n: hp.min for n, hp in mtn.get_search_space(model).named_hparams(True)}
    bad = {**a, "layer3.0.conv1.out_channels": 17}
    with pytest.raises(mtn.SubnetConfigError, match="17 is not a choice"):
        mtn.select(model, bad)
    assert mtn.get_subnet_config(model) != bad
    with pytest.raises(mtn.SubnetConfigError, match="missing configurable names"):
        mtn.select(model, {"layer2.depth": 1})
    mtn.select(model, {"layer2.depth": 1}, strict=False)
    assert mtn.get_subnet_config(model)["layer2.depth"] == 1
    with pytest.raises(mtn.SubnetConfigError, match="unknown sample mode"):
        mtn.sample(model, "median")
    with pytest.raises(mo.ConfigError, match="seed"):
        mtn.sample(model, "random", seed=1.5)  # type: ignore[arg-type]


def test_profiles_match_the_exported_models() -> None:
    model = supernet()
    profile = mtn.profile_search_space(model, DUMMY)
    for name in ("max", "min"):
        mtn.sample(model, name)
        plain = mo.export(copy.deepcopy(model))
        assert profile[name] == ForwardProfiler(plain, DUMMY).measure(["flops", "params"])
        assert mtn.profile_subnet(model, DUMMY) == profile[name]
    assert profile["original"] == profile["max"]
    assert profile["selected"] == profile["max"]  # selected when profiled
    max_config = {n: hp.max for n, hp in mtn.get_search_space(model).named_hparams(True)}
    assert mtn.profile_subnet(model, DUMMY, max_config) == profile["max"]  # counted, not selected
    assert mtn.get_subnet_config(model) != max_config


def test_functions_on_a_model_without_search_space_say_what_to_do() -> None:
    plain = nn.Sequential(nn.Linear(3, 3))
    for call in (mtn.get_subnet_config, mtn.search_space_size, mtn.print_search_space, mtn.sample):
        with pytest.raises(mo.ConvertError, match="apply a NAS mode first"):
            call(plain)
    with pytest.raises(mo.ConvertError, match="apply a NAS mode first"):
        mtn.profile_subnet(plain, torch.zeros(1, 3))
