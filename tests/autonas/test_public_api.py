"""Pins the public faces of ``modeopt_autonas`` and of its search-space layer ``modeopt_autonas.space``."""

from __future__ import annotations

import modeopt_autonas
import modeopt_autonas.space
from tests._public import assert_face

AUTONAS = {
    "SAMPLING_SCHEDULES", "AnalysisInputError", "AutoNASConfig", "AutoNASMode", "ChannelRule", "DepthRule",
    "EvolveSearcher", "ExportConfig", "ExportNASMode", "FeatureRule", "HparamValueError", "NASSearcher",
    "RandomSearcher", "SearchSpace", "SearchSpaceError", "SpaceExportedError", "StaleBatchNormWarning",
    "StructureMismatchError", "SubnetConfigError", "SubnetProfiler", "analyze", "get_search_space",
    "get_subnet_config", "has_search_space", "pause_sampling", "print_search_space", "profile_search_space",
    "profile_subnet", "recalibrate_bn", "sample", "search_space_size", "select", "space",
}

SPACE = {
    "BUILTIN_LAYER_TYPES", "DEFAULT_CALIBRATION_BATCHES", "LATENCY_OPTIONS", "LATENCY_REPORT_MODES", "LAYERS", "RULE_KEYS", "SAMPLE_MODES",
    "AnalysisInputError", "AnalysisReport", "AnalysisResult", "ChannelRule", "DepthRule", "DynamicAttributeError",
    "DynamicModule", "ExportConfig", "ExportNASMode", "FeatureRule", "Hparam", "HparamValueError", "KernelSize",
    "LatencyCacheError", "LatencyCacheWarning", "LatencyModel", "Ratio", "LayerRegistry",
    "LayerSpec", "LayerType", "NASModeBase", "NASRuleConfig", "SearchSpace", "SearchSpaceError", "SpaceExportedError",
    "SpaceStructure", "StructureMismatchError", "SubnetConfigError", "SubnetDriver", "SubnetProfiler", "analyze",
    "attr_view", "buffer_view", "channel_norm_spec", "conv_spec", "default_latency_cache_dir", "describe_exported", "get_search_space", "get_subnet_config",
    "group_norm_spec", "has_search_space", "is_dynamic", "is_huggingface", "layer_norm_spec", "linear_spec", "make_divisible", "meet_latency_limit",
    "module_type_alias", "nas_rules", "param_view", "print_search_space", "profile_search_space", "profile_subnet",
    "recalibrate_bn", "sample", "search_space_size", "select",
}


def test_autonas_face_is_pinned() -> None:
    assert_face(modeopt_autonas, AUTONAS)


def test_space_face_is_pinned() -> None:
    assert_face(modeopt_autonas.space, SPACE)


def test_top_level_space_names_are_the_space_layers_objects() -> None:
    for name in AUTONAS & SPACE:
        assert getattr(modeopt_autonas, name) is getattr(modeopt_autonas.space, name), name


def test_errors_share_one_root() -> None:
    from modeopt_core import ModeoptError

    for module in (modeopt_autonas, modeopt_autonas.space):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and name.endswith("Error"):
                assert issubclass(obj, ModeoptError), name
