"""Ranking channels before the FastNAS map: by one importance, or by the one that prunes best (``"auto"``).

A width ``k`` keeps the ``k`` first channels of a group, so the ranking decides which channels every
map entry and the result keep. No ranking wins everywhere: on trained CNNs the weights (BatchNorm
scales times the norms of the layers that read a channel, ``"contribution"``) rank best, while on
networks whose BatchNorm scales carry no information (e.g. never trained, all ones) the channels'
activations on the data (``"activation"``) do. With ``importance="auto"`` the searcher measures, with
the user's score, one *probe subnet* per candidate ranking (every width scaled by the same factor, the
largest that meets the budget) and keeps the ranking whose probe scores best; ties keep the first
candidate (``"contribution"``). That costs one score evaluation per candidate, before the map.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from modeopt_core import distributed

from ._searcher_state import FastNASSearcherState
from .scores import BatchScore, model_outputs

__all__ = ["AUTO_CANDIDATES", "IMPORTANCE_KINDS", "ChannelRanker", "uniform_subnet"]

_log = logging.getLogger(__name__)

IMPORTANCE_KINDS = ("auto", "weight", "activation", "contribution")
"""Values of the ``importance`` search-config key (see :class:`~modeopt_fastnas.BinarySearcher`)."""
AUTO_CANDIDATES = ("contribution", "activation")
"""The rankings ``importance="auto"`` compares, in order of preference on a tie."""


def uniform_subnet(choices: dict[str, tuple[int, ...]], fraction: float) -> dict[str, int]:
    """Every hparam at its smallest choice >= ``fraction`` of its largest (its smallest choice at least)."""
    subnet = {}
    for name, options in choices.items():
        wanted = fraction * max(options)
        subnet[name] = min((c for c in options if c >= wanted - 1e-9), default=max(options))
    return subnet


class ChannelRanker(FastNASSearcherState):
    """Mixin of :class:`~modeopt_fastnas.BinarySearcher`: sorts the channels by the configured ranking."""

    # Assigned by reset_search() from default_state_dict: the ranking "auto" chose and its probe scores.
    importance_chosen: str | None
    importance_probe: dict[str, float]

    def _has_ranking_data(self) -> bool:
        return self.forward_loop is not None or isinstance(self.config["score_func"], BatchScore)

    def _rank_channels(self) -> None:
        """Sort every pruned group (function-preserving; logged for undo) by the chosen ranking."""
        kind = self.config["importance"]
        if kind == "auto":
            candidates = [k for k in AUTO_CANDIDATES if k != "activation" or self._has_ranking_data()]
            if self.importance_chosen is None and len(candidates) > 1:
                # every rank measures the probes; rank 0's scores keep the ranks in step regardless
                probe = distributed.broadcast_object(self._probe_rankings(candidates))
                self.importance_chosen = max(candidates, key=lambda k: probe[k])
                self.importance_probe = probe
                _log.log(self._log_level, "FastNAS ranks channels by %s (probe scores %s)", self.importance_chosen,
                         {k: round(v, 6) for k, v in probe.items()})
                if self.importance_chosen == candidates[-1]:
                    return  # the channels are already in that order
            kind = self.importance_chosen or candidates[0]
            self.importance_chosen = kind
        self._sort(kind)

    def _sort(self, kind: str) -> None:
        space, names = self._space(), list(self._targets)
        scores = None
        if kind == "activation":
            loop = self.forward_loop
            if loop is None:  # data-free: the score's own batches (checked with the config)
                loop = functools.partial(model_outputs, inputs=self.config["score_func"].inputs)
            scores = space.activation_importance(loop, names)
        elif kind == "contribution":
            scores = space.contribution_importance(names)
        space.sort_by_importance(names, log=self._sort_log, scores=scores)

    def _probe_rankings(self, candidates: list[str]) -> dict[str, float]:
        """The score of the uniform probe subnet under each ranking (BN statistics put back after each)."""
        assert self.original_config is not None
        subnet = {**self.original_config, **self._probe_widths()}
        self._probe_subnet = subnet
        space = self._space()
        probe: dict[str, float] = {}
        for kind in candidates:
            self._sort(kind)
            saved = self._snapshot_bn()  # after the sort, which permutes the statistics with their channels
            space.select(subnet, strict=False)
            try:
                with self._map_calibration():
                    probe[kind] = self._measure_score()
            finally:
                space.select(self.original_config, strict=False)
                with torch.no_grad():
                    for buf, value in saved:
                        buf.copy_(value)
        return probe

    def _probe_widths(self) -> dict[str, int]:
        """The uniform subnet of the pruned hparams with the largest width fraction that meets the budget."""
        choices = {n: tuple(hp.choices) for n, hp in self._targets.items()}
        original = self.original_config
        assert original is not None
        limits = self.constraints.limits

        def fits(fraction: float) -> bool:
            config = {**original, **uniform_subnet(choices, fraction)}
            return all(self._count(name, config) <= limit for name, limit in limits.items())

        low, high = 0.0, 1.0  # the smallest subnet fits (checked before the search starts)
        for _ in range(20):
            mid = (low + high) / 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return uniform_subnet(choices, low)

    def _ranking_results(self) -> dict[str, Any]:
        return {"importance": self.importance_chosen or self.config["importance"],
                "importance_probe": dict(self.importance_probe) or None,
                "importance_probe_subnet": dict(self._probe_subnet) if self._probe_subnet else None}
