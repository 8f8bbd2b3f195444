"""``FastNASConfig``: per-module-type pruning rules (fine width ratios, adaptive divisor, no kernel search).

Why an *adaptive* divisor: widths are rounded to multiples of ``channel_divisor`` / ``feature_divisor``
(32 by default, a hardware-friendly width step on wide layers). Applied literally, 32 leaves a 32-wide
layer a single width and a 64-wide layer two, so a small CNN cannot be pruned at all (the reference's
digits CNN keeps 53% of its FLOPs at its smallest subnet). ``min_width_steps`` (default 8) halves the
divisor of a channel group until the group spans at least that many multiples of it: groups of 256 or
more channels use 32, 128 -> 16, 64 -> 8, 32 -> 4. Wide layers keep the hardware-friendly step; narrow
layers stay prunable down to 1/8 of their width. Set ``min_width_steps=0`` for the literal divisor.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from modeopt_autonas.space import ChannelRule, DepthRule, FeatureRule, NASRuleConfig, Ratio, nas_rules
from modeopt_core import make_rule_config

__all__ = [
    "DEFAULT_DIVISOR",
    "DEFAULT_MIN_WIDTH_STEPS",
    "DEFAULT_RATIOS",
    "FastNASChannelRule",
    "FastNASConfig",
    "FastNASFeatureRule",
]

DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""0.05, 0.1, ..., 1.0 as exact decimals (0.15, not 0.15000000000000002)."""

DEFAULT_DIVISOR = 32
DEFAULT_MIN_WIDTH_STEPS = 8

_STEPS_HELP = (
    "halve the divisor of a channel group until it spans at least this many multiples of it "
    "(narrow layers stay prunable); 0 = always use the divisor as given"
)


class FastNASChannelRule(ChannelRule):
    """Rule of a conv (or GroupNorm) under FastNAS: fine ratios, divisor 32 adapted to narrow layers."""

    channels_ratio: tuple[Ratio, ...] | None = Field(default=DEFAULT_RATIOS, description="widths as ratios")
    channel_divisor: int = Field(default=DEFAULT_DIVISOR, ge=1, strict=True, description="round widths to multiples of this")
    min_width_steps: int = Field(default=DEFAULT_MIN_WIDTH_STEPS, ge=0, strict=True, description=_STEPS_HELP)


class FastNASFeatureRule(FeatureRule):
    """Rule of a Linear or a norm layer under FastNAS (same defaults as the channel rule)."""

    features_ratio: tuple[Ratio, ...] | None = Field(default=DEFAULT_RATIOS, description="widths as ratios")
    feature_divisor: int = Field(default=DEFAULT_DIVISOR, ge=1, strict=True, description="round widths to multiples of this")
    min_width_steps: int = Field(default=DEFAULT_MIN_WIDTH_STEPS, ge=0, strict=True, description=_STEPS_HELP)


def _fastnas_rules() -> dict[str, tuple[type[BaseModel], dict[str, object] | None]]:
    # The rule classes carry the FastNAS defaults, so overriding one key of a type (e.g. only the
    # divisor) keeps the fine ratios instead of falling back to AutoNAS's class defaults.
    swap: dict[type[BaseModel], type[BaseModel]] = {ChannelRule: FastNASChannelRule, FeatureRule: FastNASFeatureRule}
    rules = nas_rules(
        conv={"channels_ratio": DEFAULT_RATIOS, "channel_divisor": DEFAULT_DIVISOR, "kernel_size": ()},
        feature={"features_ratio": DEFAULT_RATIOS, "feature_divisor": DEFAULT_DIVISOR},
        group_norm={"channels_ratio": DEFAULT_RATIOS, "channel_divisor": DEFAULT_DIVISOR},
        depth=None,
    )
    out: dict[str, tuple[type[BaseModel], dict[str, object] | None]] = {}
    for alias, (rule_cls, default) in rules.items():
        fast_cls = swap[rule_cls]
        out[alias] = (fast_cls, {**default, "min_width_steps": DEFAULT_MIN_WIDTH_STEPS})
    # depth is off by default (FastNAS prunes widths); {"nn.ModuleList": {"drop_blocks": True}} lets the
    # search drop whole blocks of a block list (transformer layers) too
    out["nn.Sequential"] = (DepthRule, None)
    out["nn.ModuleList"] = (DepthRule, None)
    return out


FastNASConfig = make_rule_config(
    "FastNASConfig",
    _fastnas_rules(),
    base=NASRuleConfig,
    doc=(
        "Config of the ``fastnas`` mode: one rule per module type (``None`` disables a type), overridable "
        "per module-name glob. Defaults: width ratios 0.05..1.0 in steps of 0.05, divisor 32 with "
        "``min_width_steps=8`` (see ``modeopt_fastnas.config``), no kernel-size or depth search (enable block "
        "dropping with ``{'nn.ModuleList': {'drop_blocks': True}}``)."
    ),
    module=__name__,
)
