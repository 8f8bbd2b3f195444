"""FastNAS for modeopt: prune a model's channels to a FLOPs/params/latency budget.

``prune(model, {"flops": "50%"}, dummy_input, {"score_func": AccuracyScore(val_loader)})`` converts the model with the
``fastnas`` mode, measures how much the score drops when each layer is narrowed (a sensitivity map),
and bisects over a drop threshold until the analytic FLOPs/params (and the latency predicted by a
measured, cached table of the layers on this device) meet the budget. See ``docs/fastnas.md``.
"""

from __future__ import annotations

import typing as _typing

from modeopt_core.sdk import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from .api import prune
    from .compat import (
        FastNASModeDescriptor,
        FastNASPatchManager,
        convert_fastnas_searchspace,
        restore_fastnas_searchspace,
    )
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

#: the submodule defining each public name (the imports above, for type checkers, say the same)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "api": ("prune",),
    "compat": (
        "FastNASModeDescriptor", "FastNASPatchManager", "convert_fastnas_searchspace", "restore_fastnas_searchspace",
    ),
    "config": ("DEFAULT_RATIOS", "FastNASChannelRule", "FastNASConfig", "FastNASFeatureRule"),
    "mode": ("FastNASMode",),
    "scores": (
        "AccuracyScore", "BatchScore", "LanguageModelScore", "LossScore", "OutputAgreement", "random_inputs",
        "random_tokens",
    ),
    "searcher": ("BN_CALIBRATION_MODES", "BinarySearcher"),
}
_SUBMODULES: tuple[str, ...] = ()

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo'd name stays an error for them
    __getattr__, __dir__ = _lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, _SUBMODULES
    )

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
