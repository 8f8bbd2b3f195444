"""The plugin author's toolkit: the helpers modeopt's own plugins build their modes and searchers with.

Everything a mode or searcher plugin needs beyond the user-facing names of :mod:`modeopt_core` lives
here, with a stable, pinned surface (``tests/core/test_public_api.py``). Plugins import from
``modeopt_core`` and ``modeopt_core.sdk`` (and ``modeopt_core.distributed`` for collectives) only; the
core's other submodules are private. See ``docs/writing-a-plugin.md``.

- Search-config validation: :func:`check_known_keys`, :func:`check_int`, :func:`check_float`,
  :func:`check_bool`, :func:`check_callable`, :func:`check_path` (each raises
  :class:`~modeopt_core.ConfigError` naming the key, the value and what is accepted), and
  :func:`candidate_key` (a stable hash of a candidate config).
- Dummy inputs: :func:`unpack_dummy_input` and :func:`run_with_dummy_input` (the ``(args..., {kwargs})``
  convention every searcher and profiler shares).
- Calibration: :data:`DEFAULT_MIN_CALIBRATION_BATCHES`, :data:`ForwardLoop`,
  :func:`default_collect_func` (with :func:`modeopt_core.make_forward_loop` and
  :func:`modeopt_core.recalibrate_batchnorm`).
- Latency: :func:`time_interleaved` (round-robin medians over a :class:`~modeopt_core.LatencyTimer`),
  :func:`device_name` (the hardware a latency belongs to) and :func:`model_device`.
- References: :func:`load_object` (the callable a ``"module:attr"`` string names, with typed errors).
- Package faces: :func:`lazy_exports` (a face whose names load on first access, PEP 562).
- Progress: :func:`progress` (a tqdm bar on a terminal, log lines elsewhere, nothing when disabled).
- Searcher types: :data:`SearchConfig` and :data:`SEARCH_CHECKPOINT_KIND`; the pieces of a searcher's
  checkpointed-state schema (:attr:`~modeopt_core.BaseSearcher.state_schema`): :class:`CandidateRecord`,
  :data:`SubnetConfig`, :data:`FiniteFloat`, :data:`NonNegativeInt`, :func:`state_error`.
- Failure safety: :func:`rollback_on_error` (a block that converts and searches a model leaves it as
  it found it when it raises).
"""

from __future__ import annotations

import typing as _typing

from ._lazy import lazy_exports

if _typing.TYPE_CHECKING:
    from ._objects import load_object
    from ._search_state import CandidateRecord, FiniteFloat, NonNegativeInt, SubnetConfig, state_error
    from .base_searcher import SEARCH_CHECKPOINT_KIND, SearchConfig
    from .calibration import DEFAULT_MIN_CALIBRATION_BATCHES, ForwardLoop, default_collect_func
    from .constraints import CONSTRAINT_NAMES, run_with_dummy_input, unpack_dummy_input
    from .conversion import rollback_on_error
    from .latency import device_name, model_device, time_interleaved
    from .progress import progress
    from .search_config import (
        candidate_key,
        check_bool,
        check_callable,
        check_float,
        check_int,
        check_known_keys,
        check_path,
    )

#: the submodule defining each public name (the imports above, for type checkers, say the same)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_objects": ("load_object",),
    "_search_state": ("CandidateRecord", "FiniteFloat", "NonNegativeInt", "SubnetConfig", "state_error"),
    "base_searcher": ("SEARCH_CHECKPOINT_KIND", "SearchConfig"),
    "calibration": ("DEFAULT_MIN_CALIBRATION_BATCHES", "ForwardLoop", "default_collect_func"),
    "constraints": ("CONSTRAINT_NAMES", "run_with_dummy_input", "unpack_dummy_input"),
    "conversion": ("rollback_on_error",),
    "latency": ("device_name", "model_device", "time_interleaved"),
    "progress": ("progress",),
    "search_config": (
        "candidate_key", "check_bool", "check_callable", "check_float", "check_int", "check_known_keys", "check_path",
    ),
}
_SUBMODULES: tuple[str, ...] = ()

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo'd name stays an error for them
    __getattr__, __dir__ = lazy_exports(
        __name__, {name: module for module, names in _EXPORTS.items() for name in names}, _SUBMODULES
    )

__all__ = [
    "CONSTRAINT_NAMES",
    "DEFAULT_MIN_CALIBRATION_BATCHES",
    "SEARCH_CHECKPOINT_KIND",
    "CandidateRecord",
    "FiniteFloat",
    "ForwardLoop",
    "NonNegativeInt",
    "SearchConfig",
    "SubnetConfig",
    "candidate_key",
    "check_bool",
    "check_callable",
    "check_float",
    "check_int",
    "check_known_keys",
    "check_path",
    "default_collect_func",
    "device_name",
    "lazy_exports",
    "load_object",
    "model_device",
    "progress",
    "rollback_on_error",
    "run_with_dummy_input",
    "state_error",
    "time_interleaved",
    "unpack_dummy_input",
]
