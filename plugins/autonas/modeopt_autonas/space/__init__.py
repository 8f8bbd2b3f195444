"""The NAS search space: the public layer every NAS-like mode builds on (FastNAS, AutoNAS, third parties).

A model converted by a NAS mode is a *search space*: its searchable dimensions (channel-group widths,
kernel sizes, depths) are :class:`Hparam` s, its layers are dynamic modules computing on the active
subnet, and ``select``/``sample`` switch subnets; ``export_nas`` turns it into plain smaller modules.
This package holds all of that and nothing of a search algorithm: importing it (or FastNAS) does not
import AutoNAS's supernet training or evolutionary search (``modeopt_autonas.modes``/``searchers``/
``training``), which sit on top of it.

- building: :func:`analyze` (tied-channel analysis), :class:`SpaceStructure` (its result, plain data),
  :class:`SearchSpace` (build/restore, select, sample, sort, export), :class:`SubnetProfiler`;
- modes: :class:`NASModeBase` (convert/restore/save of a NAS mode), :class:`ExportNASMode`
  (``export_nas``), the rule configs (:class:`NASRuleConfig`, :func:`nas_rules`, rule classes),
  :func:`get_search_space`, :func:`has_search_space`; :func:`describe_exported` and
  :func:`is_huggingface` for exported Hugging Face models (config sizes, layer indices);
- latency: :class:`LatencyModel` (a measured, cached latency table of the space on this device, for
  the ``latency`` constraint), :data:`LATENCY_OPTIONS`, :data:`LATENCY_REPORT_MODES`,
  :func:`default_latency_cache_dir`, :class:`LatencyCacheError`, :class:`LatencyCacheWarning`,
  :func:`meet_latency_limit` (measure a search's choice against the limit and refit the model);
- model functions: :func:`select`, :func:`sample`, :func:`get_subnet_config`, :func:`profile_subnet`,
  :func:`profile_search_space`, :func:`recalibrate_bn`, :func:`print_search_space`, ...;
- extending: :class:`LayerType` records (spec + :class:`DynamicModule` class + rules) registered through
  the ``modeopt_autonas_register_layers`` hook; :class:`SubnetDriver` for code that changes subnets on
  its own (supernet training).
"""

from __future__ import annotations

import typing as _typing

from modeopt_core.sdk import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from .analysis import AnalysisInputError, AnalysisReport, AnalysisResult, analyze
    from .api import (
        DEFAULT_CALIBRATION_BATCHES,
        get_subnet_config,
        print_search_space,
        profile_search_space,
        profile_subnet,
        recalibrate_bn,
        sample,
        search_space_size,
        select,
    )
    from .dynamic import BUILTIN_LAYER_TYPES, DynamicModule, attr_view, buffer_view, is_dynamic, param_view
    from .errors import (
        DynamicAttributeError,
        HparamValueError,
        SearchSpaceError,
        SpaceExportedError,
        StructureMismatchError,
        SubnetConfigError,
    )
    from .hparam import Hparam, make_divisible
    from .huggingface import describe_exported, is_huggingface
    from .latency import (
        LATENCY_OPTIONS,
        LATENCY_REPORT_MODES,
        LatencyCacheError,
        LatencyCacheWarning,
        LatencyModel,
        default_latency_cache_dir,
        meet_latency_limit,
    )
    from .layers import (
        LAYERS,
        RULE_KEYS,
        LayerRegistry,
        LayerSpec,
        LayerType,
        channel_norm_spec,
        conv_spec,
        group_norm_spec,
        layer_norm_spec,
        linear_spec,
    )
    from .mode import ExportNASMode, NASModeBase, get_search_space, has_search_space
    from .profile import SubnetProfiler
    from .rules import (
        ChannelRule,
        DepthRule,
        ExportConfig,
        FeatureRule,
        KernelSize,
        NASRuleConfig,
        Ratio,
        module_type_alias,
        nas_rules,
    )
    from .search_space import SAMPLE_MODES, SearchSpace, SubnetDriver
    from .structure import SpaceStructure

#: the submodule defining each public name (the imports above, for type checkers, say the same)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "analysis": ("AnalysisInputError", "AnalysisReport", "AnalysisResult", "analyze"),
    "api": (
        "DEFAULT_CALIBRATION_BATCHES", "get_subnet_config", "print_search_space", "profile_search_space",
        "profile_subnet", "recalibrate_bn", "sample", "search_space_size", "select",
    ),
    "dynamic": ("BUILTIN_LAYER_TYPES", "DynamicModule", "attr_view", "buffer_view", "is_dynamic", "param_view"),
    "errors": (
        "DynamicAttributeError", "HparamValueError", "SearchSpaceError", "SpaceExportedError",
        "StructureMismatchError", "SubnetConfigError",
    ),
    "hparam": ("Hparam", "make_divisible"),
    "huggingface": ("describe_exported", "is_huggingface"),
    "latency": (
        "LATENCY_OPTIONS", "LATENCY_REPORT_MODES", "LatencyCacheError", "LatencyCacheWarning", "LatencyModel",
        "default_latency_cache_dir", "meet_latency_limit",
    ),
    "layers": (
        "LAYERS", "RULE_KEYS", "LayerRegistry", "LayerSpec", "LayerType", "channel_norm_spec", "conv_spec",
        "group_norm_spec", "layer_norm_spec", "linear_spec",
    ),
    "mode": ("ExportNASMode", "NASModeBase", "get_search_space", "has_search_space"),
    "profile": ("SubnetProfiler",),
    "rules": (
        "ChannelRule", "DepthRule", "ExportConfig", "FeatureRule", "KernelSize", "NASRuleConfig", "Ratio",
        "module_type_alias", "nas_rules",
    ),
    "search_space": ("SAMPLE_MODES", "SearchSpace", "SubnetDriver"),
    "structure": ("SpaceStructure",),
}
_SUBMODULES: tuple[str, ...] = ()

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo'd name stays an error for them
    __getattr__, __dir__ = _lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, _SUBMODULES
    )

__all__ = [
    "BUILTIN_LAYER_TYPES",
    "DEFAULT_CALIBRATION_BATCHES",
    "LATENCY_OPTIONS",
    "LATENCY_REPORT_MODES",
    "LAYERS",
    "RULE_KEYS",
    "SAMPLE_MODES",
    "AnalysisInputError",
    "AnalysisReport",
    "AnalysisResult",
    "ChannelRule",
    "DepthRule",
    "DynamicAttributeError",
    "DynamicModule",
    "ExportConfig",
    "ExportNASMode",
    "FeatureRule",
    "Hparam",
    "HparamValueError",
    "KernelSize",
    "LatencyCacheError",
    "LatencyCacheWarning",
    "LatencyModel",
    "LayerRegistry",
    "LayerSpec",
    "LayerType",
    "NASModeBase",
    "NASRuleConfig",
    "Ratio",
    "SearchSpace",
    "SearchSpaceError",
    "SpaceExportedError",
    "SpaceStructure",
    "StructureMismatchError",
    "SubnetConfigError",
    "SubnetDriver",
    "SubnetProfiler",
    "analyze",
    "attr_view",
    "buffer_view",
    "channel_norm_spec",
    "conv_spec",
    "default_latency_cache_dir",
    "describe_exported",
    "get_search_space",
    "get_subnet_config",
    "group_norm_spec",
    "has_search_space",
    "is_dynamic",
    "is_huggingface",
    "layer_norm_spec",
    "linear_spec",
    "make_divisible",
    "meet_latency_limit",
    "module_type_alias",
    "nas_rules",
    "param_view",
    "print_search_space",
    "profile_search_space",
    "profile_subnet",
    "recalibrate_bn",
    "sample",
    "search_space_size",
    "select",
]
