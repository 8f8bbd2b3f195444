"""modeopt core: modes, plugins, state, safetensors checkpoints and searcher base classes.

Every public name loads on first access (PEP 562, see ``_lazy``): ``import modeopt_core`` costs almost
nothing, and a script pays only for the parts it uses.
"""

from __future__ import annotations

import typing as _typing

from ._lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from . import distributed, sdk
    from ._version import __version__
    from .calibration import CalibrationError, make_forward_loop, recalibrate_batchnorm
    from .checkpoint import CheckpointInfo, inspect_checkpoint, restore, save
    from .config import ModeConfig, RuleConfig, make_rule_config, validate_config
    from .constraints import ConstraintResult, Constraints, ForwardProfiler, ModelProfiler
    from .conversion import (
        ModeLike,
        applied_modes,
        apply_mode,
        export,
        modeopt_state,
        restore_from_modeopt_state,
        search,
        validate_modeopt_state,
    )
    from .distributed import DistributedError
    from .errors import (
        ArgumentError,
        CheckpointError,
        ConfigError,
        ConstraintError,
        ConvertError,
        ModeChainError,
        ModeNotFoundError,
        ModeoptError,
        ModeRegistrationError,
        PluginError,
        SearchError,
        StateError,
    )
    from .hookspecs import hookimpl, hookspec
    from .latency import LatencyStats, LatencyTimer, WallClockTimer, measure_latency
    from .mode import Metadata, ModeDescriptor
    from .plugins import (
        PluginFailure,
        PluginInfo,
        get_plugin_manager,
        list_plugins,
        plugin_failures,
        register_plugin,
        unregister_plugin,
    )
    from .registry import get_mode, list_modes, mode_provider
    from .searcher import BaseSearcher, IterativeSearcher
    from .state import unwrap_model
    from .statefile import read_state_file, write_state_file

#: the submodule defining each public name (the imports above, for type checkers, say the same)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_version": ("__version__",),
    "calibration": ("CalibrationError", "make_forward_loop", "recalibrate_batchnorm"),
    "checkpoint": ("CheckpointInfo", "inspect_checkpoint", "restore", "save"),
    "config": ("ModeConfig", "RuleConfig", "make_rule_config", "validate_config"),
    "constraints": ("ConstraintResult", "Constraints", "ForwardProfiler", "ModelProfiler"),
    "conversion": (
        "ModeLike", "applied_modes", "apply_mode", "export", "modeopt_state", "restore_from_modeopt_state", "search",
        "validate_modeopt_state",
    ),
    "distributed": ("DistributedError",),
    "errors": (
        "ArgumentError", "CheckpointError", "ConfigError", "ConstraintError", "ConvertError", "ModeChainError",
        "ModeNotFoundError", "ModeoptError", "ModeRegistrationError", "PluginError", "SearchError", "StateError",
    ),
    "hookspecs": ("hookimpl", "hookspec"),
    "latency": ("LatencyStats", "LatencyTimer", "WallClockTimer", "measure_latency"),
    "mode": ("Metadata", "ModeDescriptor"),
    "plugins": (
        "PluginFailure", "PluginInfo", "get_plugin_manager", "list_plugins", "plugin_failures", "register_plugin",
        "unregister_plugin",
    ),
    "registry": ("get_mode", "list_modes", "mode_provider"),
    "searcher": ("BaseSearcher", "IterativeSearcher"),
    "state": ("unwrap_model",),
    "statefile": ("read_state_file", "write_state_file"),
}
_SUBMODULES: tuple[str, ...] = ('distributed', 'sdk')

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo'd name stays an error for them
    __getattr__, __dir__ = _lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, _SUBMODULES
    )

__all__ = [
    "ArgumentError",
    "BaseSearcher",
    "CalibrationError",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "ConstraintError",
    "ConstraintResult",
    "Constraints",
    "ConvertError",
    "DistributedError",
    "ForwardProfiler",
    "IterativeSearcher",
    "LatencyStats",
    "LatencyTimer",
    "Metadata",
    "ModeChainError",
    "ModeConfig",
    "ModeDescriptor",
    "ModeLike",
    "ModeNotFoundError",
    "ModeRegistrationError",
    "ModelProfiler",
    "ModeoptError",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "RuleConfig",
    "SearchError",
    "StateError",
    "WallClockTimer",
    "__version__",
    "applied_modes",
    "apply_mode",
    "distributed",
    "export",
    "get_mode",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "inspect_checkpoint",
    "list_modes",
    "list_plugins",
    "make_forward_loop",
    "make_rule_config",
    "measure_latency",
    "mode_provider",
    "modeopt_state",
    "plugin_failures",
    "read_state_file",
    "recalibrate_batchnorm",
    "register_plugin",
    "restore",
    "restore_from_modeopt_state",
    "save",
    "sdk",
    "search",
    "unregister_plugin",
    "unwrap_model",
    "validate_config",
    "validate_modeopt_state",
    "write_state_file",
]
