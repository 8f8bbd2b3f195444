"""FastNASConfig defaults, overrides, and the adaptive divisor on real models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_fastnas import DEFAULT_RATIOS, FastNASConfig, prune
from modeopt_fastnas.digits import DigitsResNet

TYPES = [
    "nn.Conv1d", "nn.Conv2d", "nn.Conv3d", "nn.ConvTranspose1d", "nn.ConvTranspose2d", "nn.ConvTranspose3d",
    "nn.Linear", "nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.SyncBatchNorm",
    "nn.InstanceNorm1d", "nn.InstanceNorm2d", "nn.InstanceNorm3d", "nn.LayerNorm", "nn.GroupNorm", "nn.Embedding",
]
BLOCK_LISTS = ["nn.ModuleList", "nn.Sequential"]


def test_defaults_cover_every_type_with_exact_ratios_divisor_32_and_no_kernel_or_depth_search() -> None:
    config = FastNASConfig()
    assert sorted(config.aliases()) == sorted(TYPES + BLOCK_LISTS)
    for block_list in BLOCK_LISTS:  # depth is not searched unless asked for
        assert config.rule_for(block_list, "layers") is None
    assert DEFAULT_RATIOS == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                              0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    conv = config.rule_for("nn.Conv2d", "any.name")
    assert conv == {"channels_ratio": DEFAULT_RATIOS, "channel_divisor": 32, "kernel_size": (), "min_width_steps": 8}
    feature = config.rule_for("nn.LayerNorm", "x")
    assert feature == {"features_ratio": DEFAULT_RATIOS, "feature_divisor": 32, "min_width_steps": 8}
    assert config.rule_for("nn.GroupNorm", "x")["channel_divisor"] == 32
    assert "0.15000000000000002" not in str(config.dump())


def test_overriding_one_key_keeps_the_fastnas_defaults_of_the_others() -> None:
    config = mo.validate_config(FastNASConfig, {"nn.Conv2d": {"channel_divisor": 16}})
    rule = config.rule_for("nn.Conv2d", "layer1.conv")
    assert rule["channel_divisor"] == 16
    assert rule["channels_ratio"] == DEFAULT_RATIOS
    assert rule["min_width_steps"] == 8


def test_none_disables_a_type_and_globs_override_per_module() -> None:
    config = mo.validate_config(
        FastNASConfig, {"nn.Linear": None, "nn.Conv2d": {"*": {}, "layer3.*": {"channels_ratio": [0.5, 1.0]}}}
    )
    assert config.rule_for("nn.Linear", "fc") is None
    assert config.rule_for("nn.Conv2d", "layer3.0.conv1")["channels_ratio"] == (0.5, 1.0)
    assert config.rule_for("nn.Conv2d", "layer1.0.conv1")["channels_ratio"] == DEFAULT_RATIOS


def test_bad_rule_values_raise_config_errors_naming_the_field() -> None:
    with pytest.raises(mo.ConfigError, match="min_width_steps"):
        mo.validate_config(FastNASConfig, {"nn.Conv2d": {"min_width_steps": -1}})
    with pytest.raises(mo.ConfigError, match="channels_ratio"):
        mo.validate_config(FastNASConfig, {"nn.Conv2d": {"channels_ratio": [0.0, 1.0]}})


def test_adaptive_divisor_gives_narrow_layers_eight_widths_and_wide_ones_steps_of_32() -> None:
    model = nn.Sequential(nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 64),
                          nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    model = mo.apply_mode(model, ["fastnas"])
    choices = {n: hp.choices for n, hp in get_search_space(model).named_hparams(True)}
    assert choices["0.out_features"][:3] == (32, 64, 96) and len(choices["0.out_features"]) == 16
    assert choices["2.out_features"] == (32, 64, 96, 128, 160, 192, 224, 256)
    assert choices["4.out_features"] == (8, 16, 24, 32, 40, 48, 56, 64)
    assert choices["6.out_features"] == (4, 8, 12, 16, 20, 24, 28, 32)


def test_digits_cnn_smallest_subnet_is_far_below_30_percent_with_defaults() -> None:
    model = mo.apply_mode(DigitsResNet(), ["fastnas"])
    space = get_search_space(model)
    assert all(len(hp.choices) == 8 for _, hp in space.named_hparams(True))
    assert sum(1 for _ in space.named_hparams(True)) == 9  # stem and stage 1 are prunable too


def test_literal_divisor_32_cannot_reach_30_percent_and_says_what_is_reachable() -> None:
    """min_width_steps=0 is the reference's literal divisor: 32-wide layers freeze, the digits CNN stops at 48%."""
    torch.manual_seed(0)
    model = DigitsResNet()
    literal = {k: {"min_width_steps": 0} for k in TYPES}
    calls = []
    with pytest.raises(mo.ConstraintError, match=r"smallest subnet of this search space has flops \S+ \(47\.7%\)") as err:
        prune(model, {"flops": "30%"}, torch.zeros(1, 1, 8, 8), {"score_func": lambda m: calls.append(1) or 1.0},
              mode_config=literal)
    assert "flops <= 3.94M (30.0%)" in str(err.value)
    assert "min_width_steps" in str(err.value)
    assert calls == []  # refused before any score evaluation
