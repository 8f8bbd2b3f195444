"""The ``autonas`` mode: a supernet over channel widths, kernel sizes and depth, trained by sampling subnets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from modeopt_core import ModeConfig, make_rule_config

from .space import NASModeBase, NASRuleConfig, SearchSpace, nas_rules

__all__ = ["AutoNASConfig", "AutoNASMode", "SupernetRuleConfig"]


class SupernetRuleConfig(NASRuleConfig):
    """Base of ``AutoNASConfig``: the rules plus how the supernet is trained."""

    sampling: Literal["random", "sandwich"] = Field(
        default="random",
        description="subnet drawn by each training forward: 'random' (uniform), or 'sandwich' (max, min, "
        "random in rotation)",
    )
    seed: int = Field(default=0, strict=True, description="seed of the training-time subnet sampler (reproducible runs)")
    calibration_batches: int = Field(
        default=8, ge=0, strict=True,
        description="inputs of the first training forwards kept as calibration data: evaluating a subnet "
        "re-estimates its batch-norm statistics from them, searches use them when given no data (0: keep none)",
    )


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


class AutoNASMode(NASModeBase):
    """``autonas``: a supernet over channel widths, kernel sizes and depth; evolutionary search."""

    @property
    def name(self) -> str:
        return "autonas"

    @property
    def config_class(self) -> type[ModeConfig]:
        return AutoNASConfig

    @property
    def search_algorithm(self) -> type:
        from .searchers import EvolveSearcher

        return EvolveSearcher

    def on_space_ready(self, model: nn.Module, space: SearchSpace, config: NASRuleConfig) -> None:
        from .training import install_supernet_sampling  # the training machinery loads with its first use

        assert isinstance(config, SupernetRuleConfig)
        install_supernet_sampling(model, space, schedule=config.sampling, seed=config.seed,
                                  calibration_batches=config.calibration_batches)
