"""AutoNAS for modeopt: turn a model into a supernet, train it, search a subnet, export it.

Two layers live in this distribution. :mod:`modeopt_autonas.space` is the NAS search space (dynamic
modules, tied-channel analysis, ``select``/``sample``/``export_nas``, profiling) that FastNAS and
third-party modes build on; its names are re-exported here. The AutoNAS algorithm on top of it
(``autonas`` mode, supernet sampling, evolutionary/random search) is imported lazily, on first use of
one of its names, so that ``import modeopt_autonas`` (or FastNAS) does not load it; so are the space's
names (``import modeopt_autonas`` costs almost nothing until a name is used).

Typical use (see ``docs/autonas.md``)::

    import modeopt_core as mo
    import modeopt_autonas as mtn

    model = mo.apply_mode(model, ["autonas"])          # supernet; training samples subnets
    train(model)                                       # an ordinary training loop
    model, result = mo.search(model, {"flops": "60%"}, dummy_input,
                              {"score_func": val_acc, "data_loader": train_loader, "num_iters": 100})
    model = mo.export(model)                           # plain torch modules at the chosen subnet
"""

from __future__ import annotations

import typing as _typing

from modeopt_core.sdk import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from . import space
    from .modes import AutoNASConfig, AutoNASMode
    from .searchers import EvolveSearcher, NASSearcher, RandomSearcher
    from .space import (
        AnalysisInputError,
        ChannelRule,
        DepthRule,
        ExportConfig,
        ExportNASMode,
        FeatureRule,
        HparamValueError,
        SearchSpace,
        SearchSpaceError,
        SpaceExportedError,
        StructureMismatchError,
        SubnetConfigError,
        SubnetProfiler,
        analyze,
        get_search_space,
        get_subnet_config,
        has_search_space,
        print_search_space,
        profile_search_space,
        profile_subnet,
        recalibrate_bn,
        sample,
        search_space_size,
        select,
    )
    from .training import SAMPLING_SCHEDULES, StaleBatchNormWarning, pause_sampling

#: the module defining each public name (the imports above, for type checkers, say the same)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "space": (
        "AnalysisInputError", "ChannelRule", "DepthRule", "ExportConfig", "ExportNASMode", "FeatureRule",
        "HparamValueError", "SearchSpace", "SearchSpaceError", "SpaceExportedError", "StructureMismatchError",
        "SubnetConfigError", "SubnetProfiler", "analyze", "get_search_space", "get_subnet_config", "has_search_space",
        "print_search_space", "profile_search_space", "profile_subnet", "recalibrate_bn", "sample",
        "search_space_size", "select",
    ),
    "modes": ("AutoNASConfig", "AutoNASMode"),
    "searchers": ("EvolveSearcher", "NASSearcher", "RandomSearcher"),
    "training": ("SAMPLING_SCHEDULES", "StaleBatchNormWarning", "pause_sampling"),
}
_SUBMODULES = ("space",)

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo'd name stays an error for them
    __getattr__, __dir__ = _lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, _SUBMODULES
    )

__all__ = [
    "SAMPLING_SCHEDULES",
    "AnalysisInputError",
    "AutoNASConfig",
    "AutoNASMode",
    "ChannelRule",
    "DepthRule",
    "EvolveSearcher",
    "ExportConfig",
    "ExportNASMode",
    "FeatureRule",
    "HparamValueError",
    "NASSearcher",
    "RandomSearcher",
    "SearchSpace",
    "SearchSpaceError",
    "SpaceExportedError",
    "StaleBatchNormWarning",
    "StructureMismatchError",
    "SubnetConfigError",
    "SubnetProfiler",
    "analyze",
    "get_search_space",
    "get_subnet_config",
    "has_search_space",
    "pause_sampling",
    "print_search_space",
    "profile_search_space",
    "profile_subnet",
    "recalibrate_bn",
    "sample",
    "search_space_size",
    "select",
    "space",
]

