"""FastNAS for modeopt: prune a model's channels to a FLOPs/params/latency budget.

``prune(model, {"flops": "50%"}, dummy_input, {"score_func": AccuracyScore(val_loader)})`` converts the model with the
``fastnas`` mode, measures how much the score drops when each layer is narrowed (a sensitivity map),
and bisects over a drop threshold until the analytic FLOPs/params (and the latency predicted by a
measured, cached table of the layers on this device) meet the budget. See ``docs/fastnas.md``.
"""

from __future__ import annotations

from .api import prune
from .compat import FastNASModeDescriptor, FastNASPatchManager, convert_fastnas_searchspace, restore_fastnas_searchspace
from .config import DEFAULT_RATIOS, FastNASChannelRule, FastNASConfig, FastNASFeatureRule
from .mode import FastNASMode
from .scores import (
    AccuracyScore,
    BatchScore,
    LanguageModelScore,
    LossScore,
    OutputAgreement,
    random_inputs,
    random_tokens,
)
from .searcher import BN_CALIBRATION_MODES, BinarySearcher

__all__ = [
    "BN_CALIBRATION_MODES",
    "DEFAULT_RATIOS",
    "AccuracyScore",
    "BatchScore",
    "BinarySearcher",
    "FastNASChannelRule",
    "FastNASConfig",
    "FastNASFeatureRule",
    "FastNASMode",
    "FastNASModeDescriptor",
    "FastNASPatchManager",
    "LanguageModelScore",
    "LossScore",
    "OutputAgreement",
    "convert_fastnas_searchspace",
    "prune",
    "random_inputs",
    "random_tokens",
    "restore_fastnas_searchspace",
]
