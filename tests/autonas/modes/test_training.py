"""Supernet training semantics: sampling per training forward, fixed subnet in eval, BN statistics."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_autonas.space.dynamic import is_dynamic
from modeopt_core.calibration import CalibrationError, recalibrate_batchnorm
from modeopt_core.errors import ConfigError

from ._nas_helpers import DUMMY, digits_batches, supernet, train_steps


def _max(model: nn.Module) -> dict[str, int]:
    return {n: hp.max for n, hp in mtn.get_search_space(model).named_hparams(True)}


def _min(model: nn.Module) -> dict[str, int]:
    return {n: hp.min for n, hp in mtn.get_search_space(model).named_hparams(True)}


def _train_forward_configs(model: nn.Module, n: int) -> list[dict[str, int]]:
    """Config active during each of ``n`` training forwards (read inside the forward)."""
    seen: list[dict[str, int]] = []
    space = mtn.get_search_space(model)
    handle = model.stem.register_forward_pre_hook(lambda *_: seen.append(space.config()))
    model.train()
    x = digits_batches(1, 8)[0][0]
    with torch.no_grad():
        for _ in range(n):
            model(x)
    handle.remove()
    return seen


def test_each_training_forward_samples_a_new_subnet_and_eval_uses_the_selection() -> None:
    model = supernet(config={"calibration_batches": 0})
    configs = _train_forward_configs(model, 8)
    assert len({tuple(c.values()) for c in configs}) >= 6  # 236 subnets: random draws rarely repeat
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning):
        model(DUMMY)
    assert mtn.get_subnet_config(model) == _max(model)  # the default selection is the max subnet


def test_evaluating_after_supernet_training_reestimates_bn_from_the_kept_training_batches() -> None:
    model = supernet()
    data = digits_batches(10, 32)
    train_steps(model, data)  # the first 8 inputs are kept (copies)
    twin = copy.deepcopy(model)
    x = digits_batches(1, 64, offset=900)[0][0]
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no StaleBatchNormWarning: the statistics are re-estimated
        got = model(x)
        model(x)  # the same subnet: not re-estimated again
    assert mtn.recalibrate_bn(twin, data[:8]) == 8  # what an explicit re-estimation on those batches gives
    twin.eval()
    torch.testing.assert_close(got, twin(x), rtol=1e-5, atol=1e-5)
    mtn.sample(model, "min")  # another subnet: re-estimated for it at its first eval forward
    mtn.sample(twin, "min")
    mtn.recalibrate_bn(twin, data[:8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(x), twin(x), rtol=1e-5, atol=1e-5)


def test_too_few_kept_batches_or_none_kept_warn_instead() -> None:
    for config, steps in (({"calibration_batches": 0}, 10), ({}, 5)):
        model = supernet(config=config)
        train_steps(model, digits_batches(steps, 32))
        model.eval()
        with pytest.warns(mtn.StaleBatchNormWarning, match="recalibrate_bn"):
            model(DUMMY)
    with pytest.raises(ConfigError, match="calibration_batches"):
        supernet(config={"calibration_batches": -1})


def test_eval_forward_restores_the_users_selection() -> None:
    model = supernet()
    chosen = mtn.sample(model, "random", seed=4)
    _train_forward_configs(model, 3)
    assert mtn.get_search_space(model).config() != chosen  # the last training forward sampled
    assert mtn.get_subnet_config(model) == chosen  # the public view settles back
    _train_forward_configs(model, 2)
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning):
        model(DUMMY)
    assert mtn.get_search_space(model).config() == chosen


def test_a_selection_made_directly_on_the_space_after_training_is_kept() -> None:
    model = supernet()
    _train_forward_configs(model, 2)
    mtn.get_search_space(model).select(_min(model))  # by hand, not through modeopt_autonas.select
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning):
        model(DUMMY)
    assert mtn.get_subnet_config(model) == _min(model)


def test_sandwich_schedule_cycles_max_min_random() -> None:
    model = supernet(config={"sampling": "sandwich", "seed": 1})
    configs = _train_forward_configs(model, 7)
    assert configs[0] == configs[3] == configs[6] == _max(model)
    assert configs[1] == configs[4] == _min(model)
    assert configs[2] not in (_max(model), _min(model)) or configs[5] not in (_max(model), _min(model))


def test_sampling_is_seeded_and_reproducible() -> None:
    a = _train_forward_configs(supernet(config={"seed": 7}), 6)
    b = _train_forward_configs(supernet(config={"seed": 7}), 6)
    c = _train_forward_configs(supernet(config={"seed": 8}), 6)
    assert a == b
    assert a != c


def test_unknown_schedule_is_rejected_and_the_model_left_unchanged() -> None:
    torch.manual_seed(0)
    from modeopt_fastnas.digits import DigitsResNet

    model = DigitsResNet((8, 16, 32))
    with pytest.raises(ConfigError, match="sampling"):
        mo.apply_mode(model, [("autonas", {"sampling": "zigzag"})])
    assert mo.applied_modes(model) == [] and not mtn.has_search_space(model)
    assert type(model.stem[0]) is nn.Conv2d and not model._forward_pre_hooks


def test_ordinary_training_loop_trains_many_subnets() -> None:
    model = supernet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, digits_batches(4, 32))
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("layer3.") for k in changed) and any(k.startswith("stem.") for k in changed)


def test_pause_sampling_trains_the_selected_subnet() -> None:
    model = supernet()
    chosen = mtn.sample(model, "min")
    with mtn.pause_sampling(model):
        configs = _train_forward_configs(model, 3)
        train_steps(model, digits_batches(2, 16))
    assert configs == [chosen] * 3
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fine-tuning a fixed subnet keeps its statistics current
        model(DUMMY)
    assert _train_forward_configs(model, 3) != [chosen] * 3  # sampling resumes after the block


def test_deepcopy_samples_independently_and_uninstall_does_not_touch_the_original() -> None:
    model = supernet(config={"seed": 3})
    twin = copy.deepcopy(model)
    assert _train_forward_configs(twin, 4) == _train_forward_configs(model, 4)
    mo.export(twin)
    assert not mtn.has_search_space(twin) and twin._forward_pre_hooks == {}
    assert len(model._forward_pre_hooks) == 1
    assert len({tuple(c.values()) for c in _train_forward_configs(model, 4)}) > 1


def test_stale_statistics_warn_once_until_recalibrated() -> None:
    model = supernet()
    train_steps(model, digits_batches(3, 32))
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning, match="recalibrate_bn") as record:
        model(DUMMY)
        model(DUMMY)  # same subnet: no second warning
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the user's forward call, not inside torch
    assert mtn.recalibrate_bn(model, digits_batches(8, 32)) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(DUMMY)
    mtn.sample(model, "min")
    with pytest.warns(mtn.StaleBatchNormWarning, match="another subnet"):
        model(DUMMY)
    mtn.sample(model, "max")
    train_steps(model, digits_batches(1, 32))
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning, match="mix of the subnets"):  # new statistics, new warning
        model(DUMMY)


def test_model_without_batchnorm_never_warns() -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)), ["autonas"])
    x = torch.randn(5, 6)
    train_steps(model, [(x, torch.tensor([0, 1, 2, 3, 0]))])
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
        mtn.sample(model, "min")
        model(x)
    assert mtn.recalibrate_bn(model, [(x,)]) == 0  # nothing to recalibrate


def test_recalibrated_supernet_matches_a_recalibrated_export() -> None:
    """The supernet's subnet statistics equal those of the same subnet exported as a plain model."""
    model = supernet()
    train_steps(model, digits_batches(4, 32))
    mtn.sample(model, "random", seed=2)
    calib = digits_batches(6, 32, offset=200)
    x = digits_batches(1, 64, offset=800)[0][0]
    plain = mo.export(copy.deepcopy(model))
    assert not any(is_dynamic(m) for m in plain.modules())
    for m in plain.modules():  # independent estimate on the plain model, through the core directly
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
    recalibrate_batchnorm(plain, lambda m: [m(b[0]) for b in calib], min_batches=1)
    plain.eval()
    expected = plain(x)
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning):
        stale = model(x)
    assert not torch.allclose(stale, expected, atol=1e-3)
    assert mtn.recalibrate_bn(model, calib, min_batches=6) == 6
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_recalibration_is_never_skipped_silently() -> None:
    model = supernet()
    with pytest.warns(UserWarning, match="only 2 batch"):
        assert mtn.recalibrate_bn(model, digits_batches(2, 16)) == 2
    with pytest.raises(CalibrationError, match="only 2 batch"):
        mtn.recalibrate_bn(model, digits_batches(2, 16), strict=True)
    with pytest.raises(CalibrationError, match="no batch"):
        mtn.recalibrate_bn(model, [])
    with pytest.raises(ConfigError, match="exactly one of data_loader or forward_loop"):
        mtn.recalibrate_bn(model)
    assert mtn.recalibrate_bn(model, digits_batches(20, 8), max_batches=9) == 9


def test_save_records_the_selection_not_the_last_sampled_subnet() -> None:
    model = supernet()
    chosen = mtn.sample(model, "random", seed=11)
    _train_forward_configs(model, 2)
    metadata = mo.modeopt_state(model)["modes"][0]["metadata"]
    assert metadata["subnet"] == chosen


def test_export_after_training_exports_the_selection() -> None:
    model = supernet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # training forwards leave the statistics as they are
    chosen = mtn.sample(model, "random", seed=5)
    x = digits_batches(1, 16, offset=900)[0][0]
    model.eval()
    with pytest.warns(mtn.StaleBatchNormWarning):
        expected = model(x)
    _train_forward_configs(model, 2)  # leaves an auto-sampled subnet active
    assert mtn.get_search_space(model).config() != chosen
    model.eval()
    exported = mo.export(model)
    assert mo.applied_modes(exported)[-1] == "export_nas"
    assert mo.modeopt_state(exported)["modes"][1]["metadata"]["subnet"] == chosen
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=0)
