"""Searchers: the public home of :class:`BaseSearcher` and :class:`IterativeSearcher`.

Implementations live in :mod:`modeopt_core.base_searcher` and :mod:`modeopt_core.iterative_searcher`;
constraints in :mod:`modeopt_core.constraints`, calibration helpers in :mod:`modeopt_core.calibration`.
The state-schema pieces (:class:`CandidateRecord`, :data:`SubnetConfig`, :data:`FiniteFloat`,
:data:`NonNegativeInt`, :func:`state_error`) are for searchers that add checkpointed attributes
(see :attr:`BaseSearcher.state_schema`).
"""

from __future__ import annotations

from ._search_state import CandidateRecord, FiniteFloat, NonNegativeInt, SubnetConfig, state_error
from .base_searcher import SEARCH_CHECKPOINT_KIND, BaseSearcher, SearchConfig
from .iterative_searcher import IterativeSearcher

__all__ = [
    "SEARCH_CHECKPOINT_KIND",
    "BaseSearcher",
    "CandidateRecord",
    "FiniteFloat",
    "IterativeSearcher",
    "NonNegativeInt",
    "SearchConfig",
    "SubnetConfig",
    "state_error",
]
