"""AutoNAS for modeopt: turn a model into a supernet, train it, search a subnet, export it.

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

from .analysis import AnalysisInputError, analyze
from .api import (
    get_subnet_config,
    print_search_space,
    profile_search_space,
    profile_subnet,
    recalibrate_bn,
    sample,
    search_space_size,
    select,
)
from .config import AutoNASConfig, ChannelRule, DepthRule, ExportConfig, FeatureRule
from .errors import HparamValueError, SearchSpaceError, SpaceExportedError, StructureMismatchError, SubnetConfigError
from .modes import AutoNASMode, ExportNASMode, get_search_space, has_search_space
from .profile import SubnetProfiler
from .searchers import EvolveSearcher, NASSearcher, RandomSearcher
from .space import SearchSpace
from .training import SAMPLING_SCHEDULES, StaleBatchNormWarning, pause_sampling

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
]
