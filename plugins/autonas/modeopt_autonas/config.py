"""Configs of the NAS modes: per-module-type rules (channel ratios, divisors, kernels, depth)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from modeopt_core import ModeConfig, RuleConfig, make_rule_config

from .layers import LAYERS

__all__ = [
    "AutoNASConfig",
    "ChannelRule",
    "DepthRule",
    "ExportConfig",
    "FeatureRule",
    "KernelSize",
    "NASRuleConfig",
    "Ratio",
    "SupernetRuleConfig",
    "module_type_alias",
    "nas_rules",
]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: rule numbers are strict: "8" or True is an error, not 8 or 1 (JSON lists still read as tuples)
Ratio = Annotated[float, Field(strict=True)]
KernelSize = Annotated[int, Field(strict=True)]


def _check_ratios(value: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if value is not None:
        if not value:
            raise ValueError("give at least one ratio, or null to keep the current widths")
        bad = [r for r in value if not 0 < r <= 1]
        if bad:
            raise ValueError(f"ratios must lie in (0, 1]; got {bad}")
    return value


class ChannelRule(_Rule):
    """Rule of a conv (or GroupNorm): which output-channel widths to offer."""

    channels_ratio: tuple[Ratio, ...] | None = Field(
        default=(0.5, 0.67, 1.0), description="widths as ratios of the original (always incl. 1.0)"
    )
    channel_divisor: int = Field(default=8, ge=1, strict=True, description="round each width to a multiple of this")
    kernel_size: tuple[KernelSize, ...] = Field(
        default=(), description="odd kernel sizes to offer (centred sub-kernels); () = keep the original"
    )

    _ratios = field_validator("channels_ratio")(_check_ratios)


class FeatureRule(_Rule):
    """Rule of a Linear or a norm layer: which feature widths to offer."""

    features_ratio: tuple[Ratio, ...] | None = Field(default=(0.5, 0.67, 1.0), description="widths as ratios")
    feature_divisor: int = Field(default=8, ge=1, strict=True, description="round each width to a multiple of this")

    _ratios = field_validator("features_ratio")(_check_ratios)


class DepthRule(_Rule):
    """Rule of an ``nn.Sequential`` of residual blocks: elastic depth."""

    min_depth: int = Field(default=0, ge=0, strict=True, description="never keep fewer children than this")


_CONVS = ("nn.Conv1d", "nn.Conv2d", "nn.Conv3d", "nn.ConvTranspose1d", "nn.ConvTranspose2d", "nn.ConvTranspose3d")
_FEATURES = (
    "nn.Linear",
    "nn.BatchNorm1d",
    "nn.BatchNorm2d",
    "nn.BatchNorm3d",
    "nn.SyncBatchNorm",
    "nn.InstanceNorm1d",
    "nn.InstanceNorm2d",
    "nn.InstanceNorm3d",
    "nn.LayerNorm",
)


class NASRuleConfig(RuleConfig):
    """Base of the NAS mode configs: rules plus analysis escape hatches."""

    frozen_modules: list[str] = Field(
        default_factory=list, description="globs of module names whose widths must not change"
    )
    leaf_modules: list[str] = Field(
        default_factory=list, description="globs of module names the analysis must not trace into"
    )


def nas_rules(
    conv: Mapping[str, Any], feature: Mapping[str, Any], group_norm: Mapping[str, Any], depth: Mapping[str, Any] | None
) -> dict[str, tuple[type[BaseModel], Any]]:
    """Default rules for every supported module type (``depth=None`` leaves depth out of the space)."""
    rules: dict[str, tuple[type[BaseModel], Any]] = {k: (ChannelRule, dict(conv)) for k in _CONVS}
    rules.update({k: (FeatureRule, dict(feature)) for k in _FEATURES})
    rules["nn.GroupNorm"] = (ChannelRule, dict(group_norm))
    if depth is not None:
        rules["nn.Sequential"] = (DepthRule, dict(depth))
    return rules


class SupernetRuleConfig(NASRuleConfig):
    """Base of ``AutoNASConfig``: the rules plus how the supernet is trained."""

    sampling: Literal["random", "sandwich"] = Field(
        default="random",
        description="subnet drawn by each training forward: 'random' (uniform), or 'sandwich' (max, min, "
        "random in rotation)",
    )
    seed: int = Field(default=0, strict=True, description="seed of the training-time subnet sampler (reproducible runs)")


AutoNASConfig = make_rule_config(
    "AutoNASConfig",
    nas_rules(
        conv={"channels_ratio": (0.5, 0.67, 1.0), "channel_divisor": 8, "kernel_size": ()},
        feature={"features_ratio": (0.5, 0.67, 1.0), "feature_divisor": 8},
        group_norm={"channels_ratio": (0.5, 0.67, 1.0), "channel_divisor": 8},
        depth={"min_depth": 0},
    ),
    base=SupernetRuleConfig,
    doc="Config of the ``autonas`` mode: rules per module type (``None`` disables a type), glob overrides.",
    module=__name__,
)


class ExportConfig(ModeConfig):
    """Config of the ``export_nas`` mode."""

    strict: bool = Field(default=True, strict=True, description="on restore, require the recorded subnet to match exactly")


def module_type_alias(module: nn.Module) -> str | None:
    """The rule key of a module: ``"nn.Conv2d"`` for torch layers, ``"pkg.mod.Class"`` for plugin layers."""
    if isinstance(module, nn.Sequential):
        return "nn.Sequential"
    base = LAYERS.lookup_class(type(module))
    if base is None:
        return None
    if base.__module__.startswith("torch.nn"):
        return f"nn.{base.__name__}"
    return f"{base.__module__}.{base.__qualname__}"
