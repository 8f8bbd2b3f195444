"""AutoNAS for modeopt: turn a model into a supernet, train it, search a subnet, export it.

Two layers live in this distribution. :mod:`modeopt_autonas.space` is the NAS search space (dynamic
modules, tied-channel analysis, ``select``/``sample``/``export_nas``, profiling) that FastNAS and
third-party modes build on; its names are re-exported here. The AutoNAS algorithm on top of it
(``autonas`` mode, supernet sampling, evolutionary/random search) is imported lazily, on first use of
one of its names, so that ``import modeopt_autonas`` (or FastNAS) does not load it.

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

import importlib as _importlib
import typing as _typing

from . import space
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

if _typing.TYPE_CHECKING:
    from .modes import AutoNASConfig, AutoNASMode
    from .searchers import EvolveSearcher, NASSearcher, RandomSearcher
    from .training import SAMPLING_SCHEDULES, StaleBatchNormWarning, pause_sampling

#: the AutoNAS algorithm's public names -> the module defining them (imported on first access)
_LAZY = {
    "AutoNASConfig": "modes",
    "AutoNASMode": "modes",
    "EvolveSearcher": "searchers",
    "NASSearcher": "searchers",
    "RandomSearcher": "searchers",
    "SAMPLING_SCHEDULES": "training",
    "StaleBatchNormWarning": "training",
    "pause_sampling": "training",
}

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


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
