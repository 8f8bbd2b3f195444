"""The state every part of :class:`~modeopt_fastnas.BinarySearcher` shares (attributes and small accessors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_autonas.space import Hparam, SearchSpace, SubnetProfiler
from modeopt_core import IterativeSearcher

from .sensitivity import PruningKey

__all__ = ["FastNASSearcherState"]


class FastNASSearcherState(IterativeSearcher):
    """Base of the FastNAS searcher's parts (map building, boundary selection, the searcher itself)."""

    # Assigned by reset_search() from default_state_dict.
    original_score: float | None
    sensitivity_raw: dict[str, list[list[Any]]]
    num_score_evals: int
    sensitivity_time_s: float
    thresholds_visited: list[dict[str, Any]]

    def __init__(self) -> None:
        super().__init__()
        self.space: SearchSpace | None = None
        self._profiler: SubnetProfiler | None = None
        self._targets: dict[str, Hparam] = {}  # the width hparams being pruned
        self._clear_run()

    def _clear_run(self) -> None:
        self._drops: dict[str, dict[int, float]] = {}  # monotone measured drops
        self._keys: dict[str, dict[int, PruningKey]] = {}  # pruning order (see .sensitivity)
        self._threshold: PruningKey = (0.0, 0.0, 0.0)
        self._best_key: PruningKey | None = None
        self._chosen_threshold: float | None = None
        self._bn_snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._sort_log: list[Any] = []  # the channel sort, undone if the search fails
        self._dropped_choices: dict[str, list[int]] = {}  # widths predicted no faster than a wider one
        self._latency_report: dict[str, Any] | None = None
        self._latency_check: dict[str, Any] | None = None  # the measured check of the latency limit
        self._timings: dict[str, float] = {}
        self._evals_this_run = self._calibration_batches = 0
        self._bn_recalibrated = False
        self._calibration_inputs: list[Any] | None = None  # model inputs of the drawn calibration batches
        # the map's share of them (``map_calibration_samples``): its loop and model inputs
        self._map_forward_loop: Any = None
        self._map_calibration_inputs: list[Any] | None = None
        self._in_map = False  # measuring the original score or the map: calibrate on the map's share
        self._calibrated_at_max = False  # BN statistics re-estimated for the original subnet in this run
        self._boundary: list[dict[str, Any]] = []  # candidate subnets at the budget (see .boundary)
        self._boundary_evals = 0
        self._chosen_order = "drop"
        self._probe_subnet: dict[str, int] | None = None

    def _reset_bisection(self) -> None:
        """Forget the binary search's iterations, best subnet and cached constraint checks (the map stays)."""
        self.iter_num, self.history, self.best, self.stopped_early = 0, [], None, False
        self.thresholds_visited, self._best_key = [], None
        self.forget_evaluations()

    @property
    def _bn_mode(self) -> str:
        mode = self.config["bn_calibration"]
        if mode == "auto":
            return "each" if self.forward_loop is not None else "off"
        return str(mode)

    @property
    def _log_level(self) -> int:
        return self.log_level  # INFO when verbose (on rank 0 only under torch.distributed)

    def _snapshot_bn(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every BatchNorm buffer of the model with a copy of its value (put back with ``buf.copy_``)."""
        return [(buf, buf.detach().clone()) for m in self.model.modules() if isinstance(m, _BatchNorm)
                for buf in m._buffers.values() if buf is not None]

    @contextlib.contextmanager
    def _map_calibration(self) -> Iterator[None]:
        """While measuring the original score, the ranking probe or the map: calibrate on the map's share of the batches."""
        self._in_map = True
        try:
            yield
        finally:
            self._in_map = False

    def _measure_score(self, calibrate: bool | None = None) -> float:
        """The real score of the current subnet (implemented by the map builder)."""
        raise NotImplementedError

    def _space(self) -> SearchSpace:
        assert self.space is not None  # set by make_profiler, which search() calls first
        return self.space

    def _counter(self) -> SubnetProfiler:
        assert self._profiler is not None  # search() refuses constraints without a dummy input
        return self._profiler

    def _count(self, name: str, config: dict[str, int] | None = None) -> float:
        """``flops``, ``params`` or ``latency`` (predicted ms) of the active subnet or of ``config``."""
        return float(getattr(self._counter(), name)(config))
