"""Searchers: the public home of :class:`BaseSearcher` and :class:`IterativeSearcher`.

Implementations live in :mod:`modeopt_core.base_searcher` and :mod:`modeopt_core.iterative_searcher`;
constraints in :mod:`modeopt_core.constraints`, calibration helpers in :mod:`modeopt_core.calibration`.
"""

from __future__ import annotations

from .base_searcher import SEARCH_CHECKPOINT_KIND, BaseSearcher, SearchConfig
from .iterative_searcher import IterativeSearcher

__all__ = ["SEARCH_CHECKPOINT_KIND", "BaseSearcher", "IterativeSearcher", "SearchConfig"]
