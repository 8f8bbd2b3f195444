"""Tied-channel analysis: which channel dims of a model's layers must shrink together.

``analyze(model)`` traces the model symbolically with ``torch.fx`` (no input, no forward pass, no
change to the model), propagates channel groups through the graph with a union-find (the rules are
documented in :mod:`.propagate`), and returns the :class:`~modeopt_autonas.structure.SpaceStructure`
the search-space builder consumes plus an :class:`AnalysisReport` for people. Anything the analysis
does not understand freezes the channels touching it, with a reason; it never raises for an
unsupported op or an untraceable module.
"""

from .pipeline import AnalysisInputError, AnalysisResult, analyze
from .report import AnalysisReport, GroupReport

__all__ = ["AnalysisInputError", "AnalysisReport", "AnalysisResult", "GroupReport", "analyze"]
