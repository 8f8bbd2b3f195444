"""A measured latency model of a search space on the current device (the ``latency`` constraint).

:class:`LatencyModel` times every searchable layer at each width it can run at, calibrates the sum
against a few whole exported subnets, and predicts any subnet's latency in microseconds; tables are
cached per device, torch version, thread count, dtype and timer (:func:`default_latency_cache_dir`).
See ``docs/fastnas.md`` ("Pruning for latency").
"""

from __future__ import annotations

from .cache import LatencyCacheError, LatencyCacheWarning, default_latency_cache_dir
from .model import LATENCY_OPTIONS, LATENCY_REPORT_MODES, LatencyModel
from .verification import meet_latency_limit

__all__ = [
    "LATENCY_OPTIONS",
    "LATENCY_REPORT_MODES",
    "LatencyCacheError",
    "LatencyCacheWarning",
    "LatencyModel",
    "default_latency_cache_dir",
    "meet_latency_limit",
]
