"""Pins the public surface: adding or removing a name must be a deliberate change of this test."""

import modeopt_core
import modeopt_core.distributed
import modeopt_core.sdk
from tests._public import assert_face

EXPECTED = {
    "CheckpointError", "ConfigError", "ConstraintError", "ConvertError", "DistributedError", "Metadata",
    "ModeChainError", "ModeConfig", "ModeDescriptor", "ModeLike", "ModeNotFoundError", "ModeRegistrationError",
    "ModeoptError", "PluginError", "PluginFailure", "PluginInfo", "RuleConfig", "SearchError", "StateError",
    "__version__", "applied_modes", "apply_mode", "export", "get_mode", "get_plugin_manager", "hookimpl", "hookspec",
    "list_modes", "list_plugins", "make_rule_config", "mode_provider", "modeopt_state", "plugin_failures",
    "register_plugin", "restore_from_modeopt_state", "search", "unregister_plugin", "unwrap_model",
    "validate_config", "validate_modeopt_state",
    # searcher base
    "ArgumentError",
    "BaseSearcher", "IterativeSearcher", "Constraints", "ConstraintResult", "ModelProfiler", "ForwardProfiler",
    "recalibrate_batchnorm", "make_forward_loop", "CalibrationError",
    # latency measurement
    "LatencyStats", "LatencyTimer", "WallClockTimer", "measure_latency",
    # checkpoints
    "save", "restore", "inspect_checkpoint", "CheckpointInfo", "read_state_file", "write_state_file",
    # the plugin author's namespaces
    "sdk", "distributed",
}

SDK = {
    "CONSTRAINT_NAMES", "DEFAULT_MIN_CALIBRATION_BATCHES", "SEARCH_CHECKPOINT_KIND", "ForwardLoop", "SearchConfig",
    "candidate_key", "check_bool", "check_callable", "check_float", "check_int", "check_known_keys", "check_path",
    "default_collect_func", "device_name", "lazy_exports", "load_object", "model_device", "progress", "run_with_dummy_input", "time_interleaved",
    "unpack_dummy_input",
    # search-state schema pieces, failure safety
    "CandidateRecord", "FiniteFloat", "NonNegativeInt", "SubnetConfig", "state_error", "rollback_on_error",
}

DISTRIBUTED = {
    "DistributedError", "all_gather_objects", "barrier", "broadcast_buffers", "broadcast_object", "is_distributed",
    "is_main", "main_process_first", "only_main", "rank", "run_and_gather", "run_on_main", "shard", "world_size",
}


def test_core_face_is_pinned() -> None:
    assert_face(modeopt_core, EXPECTED)


def test_sdk_face_is_pinned() -> None:
    assert_face(modeopt_core.sdk, SDK)


def test_distributed_names_are_pinned() -> None:
    assert set(modeopt_core.distributed.__all__) == DISTRIBUTED


def test_all_names_exist() -> None:
    for module in (modeopt_core, modeopt_core.sdk, modeopt_core.distributed):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_errors_share_one_root() -> None:
    for name in modeopt_core.__all__:
        obj = getattr(modeopt_core, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, modeopt_core.ModeoptError), name
