"""Rules of the NAS modes: per-module-type rule classes (channel ratios, divisors, kernels, depth), the
rule-config base every NAS-like mode's config derives from, and the ``export_nas`` config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from modeopt_core import ModeConfig, RuleConfig

from .dynamic import BUILTIN_LAYER_TYPES
from .layers import LAYERS

__all__ = [
    "ChannelRule",
    "DepthRule",
    "ExportConfig",
    "FeatureRule",
    "KernelSize",
    "NASRuleConfig",
    "Ratio",
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
    """Rule of an ``nn.Sequential`` or ``nn.ModuleList`` of blocks: elastic depth."""

    min_depth: int = Field(default=0, ge=0, strict=True, description="never keep fewer children than this (trailing depth)")
    drop_blocks: bool = Field(
        default=True,
        strict=True,
        description="in a list of identical blocks (transformer layers), any block may be dropped on its own "
        "(a keep hparam per block) rather than only the trailing ones",
    )
    frozen_blocks: tuple[str, ...] = Field(default=(), description="globs of blocks that are never dropped")


_CONVS = tuple(t.rule_alias for t in BUILTIN_LAYER_TYPES if t.rules == "channels" and t.module_class is not nn.GroupNorm)
_FEATURES = tuple(dict.fromkeys(t.rule_alias for t in BUILTIN_LAYER_TYPES if t.rules == "features"))


class NASRuleConfig(RuleConfig):
    """Base of the NAS mode configs: rules plus analysis escape hatches."""

    frozen_modules: list[str] = Field(
        default_factory=list, description="globs of module names whose widths must not change"
    )
    leaf_modules: list[str] = Field(
        default_factory=list, description="globs of module names the analysis must not trace into"
    )
    uniform: bool = Field(
        default=False,
        description="one width per part of the blocks of a block list (the same heads and MLP width in every "
        "layer), so that an exported Hugging Face model is described by its config",
    )


def nas_rules(
    conv: Mapping[str, Any], feature: Mapping[str, Any], group_norm: Mapping[str, Any], depth: Mapping[str, Any] | None
) -> dict[str, tuple[type[BaseModel], Any]]:
    """Default rules for every built-in module type (``depth=None`` leaves depth out of the space).

    Args:
        conv: the rule of every conv type; ``feature``: of Linear and the norms; ``group_norm``: of
            GroupNorm; ``depth``: of ``nn.Sequential`` (elastic depth).
    """
    rules: dict[str, tuple[type[BaseModel], Any]] = {k: (ChannelRule, dict(conv)) for k in _CONVS}
    rules.update({k: (FeatureRule, dict(feature)) for k in _FEATURES})
    rules["nn.GroupNorm"] = (ChannelRule, dict(group_norm))
    if depth is not None:
        rules["nn.Sequential"] = (DepthRule, dict(depth))
        rules["nn.ModuleList"] = (DepthRule, dict(depth))
    return rules


class ExportConfig(ModeConfig):
    """Config of the ``export_nas`` mode."""

    strict: bool = Field(default=True, strict=True, description="on restore, require the recorded subnet to match exactly")


def module_type_alias(module: nn.Module) -> str | None:
    """The rule key of a (bound) module: ``"nn.Conv2d"`` for torch layers and subclasses the analysis
    recognised by their forward, its record's ``rule_alias`` for plugin layers."""
    if isinstance(module, nn.Sequential):
        return "nn.Sequential"
    if type(module) is nn.ModuleList:
        return "nn.ModuleList"
    record = LAYERS.layer_type(module, verified=True)
    return None if record is None else record.rule_alias
