"""Pins the public surface: adding or removing a name must be a deliberate change of this test."""

import modeopt_core

EXPECTED = {
    "CheckpointError", "ConfigError", "ConstraintError", "ConvertError", "Metadata", "ModeChainError",
    "ModeConfig", "ModeDescriptor", "ModeLike", "ModeNotFoundError", "ModeRegistrationError", "ModeoptError",
    "PluginError", "PluginFailure", "PluginInfo", "RuleConfig", "SearchError", "StateError", "__version__",
    "applied_modes", "apply_mode", "export", "get_mode", "get_plugin_manager", "hookimpl", "hookspec",
    "list_modes", "list_plugins", "make_rule_config", "mode_provider", "modeopt_state", "plugin_failures",
    "register_plugin", "restore_from_modeopt_state", "search", "unregister_plugin", "unwrap_model",
    "validate_config", "validate_modeopt_state",
    # searcher base
    "ArgumentError",
    "BaseSearcher", "IterativeSearcher", "Constraints", "ConstraintResult", "ModelProfiler", "ForwardProfiler",
    "recalibrate_batchnorm", "make_forward_loop", "CalibrationError",
    # checkpoints
    "save", "restore", "inspect_checkpoint", "CheckpointInfo", "read_state_file", "write_state_file",
}


def test_all_is_pinned() -> None:
    assert set(modeopt_core.__all__) == EXPECTED


def test_all_names_exist() -> None:
    for name in modeopt_core.__all__:
        assert hasattr(modeopt_core, name), name


def test_errors_share_one_root() -> None:
    for name in modeopt_core.__all__:
        obj = getattr(modeopt_core, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, modeopt_core.ModeoptError), name
