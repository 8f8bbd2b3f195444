"""modeopt core: modes, plugins, state, safetensors checkpoints and searcher base classes."""

from __future__ import annotations

import importlib.metadata as _md

try:
    __version__ = _md.version("modeopt-core")
except _md.PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0+unknown"

from . import distributed, sdk
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
