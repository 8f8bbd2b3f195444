"""The ``fastnas`` mode: AutoNAS's search space without training-time sampling, searched by FastNAS."""

from __future__ import annotations

from modeopt_autonas.space import NASModeBase
from modeopt_core import ModeConfig

from .config import FastNASConfig

__all__ = ["FastNASMode"]


class FastNASMode(NASModeBase):
    """``fastnas``: convert a model into a search space over channel/feature widths; prune by search.

    Convert, restore, save and new-mode updates are the shared NAS ones (the search-space structure
    and the selected subnet are recorded, so restore never re-runs the analysis). Unlike ``autonas``
    nothing is installed for training: a converted model trains as a plain model at its selected
    subnet. The export mode is ``export_nas``; the modes allowed next are the NAS modes' set
    (``export_nas``, a few well-known ones, and whatever plugins add through AutoNAS's
    ``modeopt_autonas_next_modes`` hook).
    """

    @property
    def name(self) -> str:
        return "fastnas"

    @property
    def config_class(self) -> type[ModeConfig]:
        return FastNASConfig

    @property
    def search_algorithm(self) -> type:
        from .searcher import BinarySearcher

        return BinarySearcher
