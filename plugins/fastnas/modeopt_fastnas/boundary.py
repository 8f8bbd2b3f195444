"""The subnet at the budget: bisect each pruning order, then judge the boundary subnets by real scores.

:class:`BoundarySelector` is the part of :class:`~modeopt_fastnas.BinarySearcher` after the map:

1. ``"drop"`` order (ModelOpt's): the searcher's own iterations bisect the drop thresholds; each step
   is an analytic FLOPs/params count, its score the predicted ``original - threshold``; the visited
   thresholds are recorded (``thresholds_visited``).
2. ``"cost"`` order (see :mod:`.selection`): bisected the same way, analytically, then filled up to
   the budget; with limits on several resources, once per weight vector of the resources.
3. With a ``latency`` limit, the chosen subnet is timed and, while it misses the limit as measured,
   the latency model is refitted and step 1 runs again (``latency_verify``).
4. With ``boundary_evals`` = N > 0, the distinct candidate subnets of the orders in ``selection`` are
   measured for real (BN re-estimated as for the returned model) and the best score wins: first each
   order's own result, then, while N allows, rank by rank: the drop order's next threshold (one step
   more pruned); the cost order's subnets of the other weight vectors (by summed drop), then its
   result's unfilled next threshold. With N = 0 the boundary subnet of
   the first order in ``selection`` is returned on its prediction alone (``("drop",)``, the default:
   ModelOpt's behaviour).
"""

from __future__ import annotations

import logging
from typing import Any

from modeopt_autonas.space import meet_latency_limit

from ._searcher_state import FastNASSearcherState
from .latency import bisectable_thresholds, drop_slower_choices
from .selection import bisect_threshold, cost_keys, fill_to_budget, weight_grid
from .sensitivity import PruningKey, monotone_drops, pruning_keys, subnet_for_threshold, threshold_candidates

__all__ = ["BoundarySelector"]

_log = logging.getLogger(__name__)


class BoundarySelector(FastNASSearcherState):
    """Mixin of :class:`~modeopt_fastnas.BinarySearcher`: pick the subnet at the budget (module doc)."""

    def _cost_weights(self) -> list[dict[str, float]]:
        """Weights of the ``"cost"`` order per resource, each relative to the unpruned model's count
        (one limit: FLOPs plus ``params_weight`` times params) or, with several limits, to its limit
        (every vector of :func:`~.selection.weight_grid`)."""
        limited = self._limited()
        if len(limited) <= 1:
            return [{"flops": 1.0, "params": self.config["params_weight"]}]
        return weight_grid(limited)

    def _limited(self) -> list[str]:
        return [k for k in ("flops", "params", "latency") if k in self.constraints.limits]

    def _cost_norms(self, weights: dict[str, float]) -> dict[str, float]:
        if len(self._limited()) <= 1:
            widest = {n: hp.max for n, hp in self._space().named_hparams(True)}
            return {k: self._count(k, widest) or 1.0 for k in weights}
        return {k: float(self.constraints.limits[k]) or 1.0 for k in weights}

    def _binary_search(self) -> None:
        """Bisect the ``"drop"`` order with the searcher's iterations (history, best, visited thresholds)."""
        counter = self._counter()
        self._drops = {n: monotone_drops(self.sensitivity_raw[n]) for n in self._targets}
        widest = {n: hp.max for n, hp in self._space().named_hparams(True)}
        self._keys = pruning_keys(self._drops, lambda name, choice: counter.flops({**widest, name: choice}))
        if "latency" in self.constraints.limits:  # see .latency: prefer faster widths, keep the bisection exact
            self._keys, self._dropped_choices = drop_slower_choices(
                self._keys, lambda name, choice: counter.latency({**widest, name: choice}))
        thresholds = threshold_candidates(self._keys)
        if "latency" in self.constraints.limits:
            thresholds = bisectable_thresholds(thresholds, lambda t: self._satisfies(self._subnet_at(self._keys, t)))
        lo, hi = -1, len(thresholds) - 1  # thresholds[hi] satisfies (checked up front); lo never does
        index = hi
        while self.iter_num < self.config["num_iters"]:
            self._threshold = thresholds[index]
            self.before_step()
            candidate = self.run_step()
            self.after_step(candidate)
            self.iter_num += 1
            self.thresholds_visited.append({
                "threshold": self._threshold[0],
                "key": list(self._threshold),
                "predicted_score": self.eval_score(),
                "flops": counter.flops(),
                "params": counter.params(),
                **({"latency": counter.latency()} if counter.latency_model is not None else {}),
                "satisfied": candidate["satisfied"],
                "subnet": dict(candidate["config"]),
            })
            if candidate["is_best"]:
                self._best_key = self._threshold
            if candidate["satisfied"]:
                hi = index
            else:
                lo = index
            if hi - lo <= 1:
                self.stopped_early = True
                break
            index = (lo + hi) // 2
        self._chosen_threshold = thresholds[hi][0]
        self._boundary = [self._boundary_entry("drop", thresholds, hi, self._keys, rank=0)]
        if hi + 1 < len(thresholds):
            self._boundary.append(self._boundary_entry("drop", thresholds, hi + 1, self._keys, rank=1))
        _log.log(self._log_level, "FastNAS binary search: %d steps over %d thresholds, chose drop threshold %.4g",
                 self.iter_num, len(thresholds), thresholds[hi][0])

    def _verify_latency(self) -> None:
        """Time the chosen subnet against the latency limit; while it misses, refit and bisect again."""
        counter = self._counter()
        limit = self.constraints.limits.get("latency")
        rounds = self.config["latency_verify"]
        if limit is None or counter.latency_model is None or rounds == 0 or self.best is None:
            return

        def choose() -> dict[str, int]:
            self._reset_bisection()  # under the refitted model the earlier constraint checks are stale
            self._binary_search()
            assert self.best is not None  # the bisection only keeps lists with a fitting threshold
            return dict(self.best["config"])

        self._latency_check = meet_latency_limit(counter.latency_model, limit, dict(self.best["config"]), choose,
                                                 rounds, self._log_level)

    def _boundary_entry(self, order: str, thresholds: list[PruningKey], index: int,
                        keys: dict[str, dict[int, PruningKey]], rank: int) -> dict[str, Any]:
        return self._entry_for(order, index, self._subnet_at(keys, thresholds[index]), rank)

    def _entry_for(self, order: str, step: int, subnet: dict[str, int], rank: int) -> dict[str, Any]:
        """A candidate subnet of ``order``; ``rank`` 0 is the order's own result, higher ranks are
        measured later (``boundary_evals``)."""
        counter = self._counter()
        assert self.original_score is not None
        worst = max((self._drops[n][c] for n, c in subnet.items() if n in self._drops), default=0.0)
        summed = sum(self._drops[n][c] for n, c in subnet.items() if n in self._drops)
        return {
            "order": order, "step": step, "rank": rank, "subnet": subnet, "flops": counter.flops(subnet),
            "params": counter.params(subnet), "satisfied": self._satisfies(subnet),
            "predicted_score": self.original_score - worst, "summed_drop": summed, "score": None,
        }

    def _satisfies(self, subnet: dict[str, int]) -> bool:
        return all(self._count(n, subnet) <= limit for n, limit in self.constraints.limits.items())

    def _cost_boundary(self) -> None:
        """Bisect the ``"cost"`` order analytically per weight vector and fill each subnet up to the
        budget; candidates: the filled subnets by summed drop (the least is the order's result), then
        the best one's unfilled one-step-further neighbour."""
        counts: dict[tuple[str, str, int], float] = {}  # (resource, hparam, choice) -> count with it alone
        filled: list[dict[str, Any]] = []
        for weights in self._cost_weights():
            entry = self._cost_candidate(weights, counts)
            if entry is not None and all(e["subnet"] != entry["subnet"] for e in filled):
                filled.append(entry)
        filled.sort(key=lambda e: e["summed_drop"])
        neighbours = [e.pop("_neighbour", None) for e in filled]
        for rank, entry in enumerate(filled):
            entry["rank"] = rank
        self._boundary.extend(filled)
        if neighbours and neighbours[0] is not None:
            neighbours[0]["rank"] = len(filled)
            self._boundary.append(neighbours[0])

    def _cost_candidate(self, weights: dict[str, float], counts: dict[tuple[str, str, int], float]
                        ) -> dict[str, Any] | None:
        """The ``"cost"`` order's filled subnet for one weight vector (None when it cannot reach the
        budget: choices off the hull are never taken), with its unfilled next threshold attached."""
        widest = {n: hp.max for n, hp in self._space().named_hparams(True)}
        norms = self._cost_norms(weights)
        active = {k: w / norms[k] for k, w in weights.items() if w > 0}

        def alone(name: str, choice: int) -> float:
            for k in active:
                if (k, name, choice) not in counts:
                    counts[(k, name, choice)] = self._count(k, {**widest, name: choice})
            return sum(w * counts[(k, name, choice)] for k, w in active.items())

        def added(name: str, current: int, wider: int) -> float:  # with the other hparams at their max
            return alone(name, wider) - alone(name, current)

        keys = cost_keys(self._drops, alone)
        thresholds = [t for t in threshold_candidates(keys) if t[0] != float("inf")]
        if not thresholds or not self._satisfies(self._subnet_at(keys, thresholds[-1])):
            return None
        hi, _ = bisect_threshold(thresholds, lambda t: self._satisfies(self._subnet_at(keys, t)),
                                 max_steps=self.config["num_iters"])
        bisected = self._subnet_at(keys, thresholds[hi])
        subnet = fill_to_budget(bisected, self._drops, added, lambda s: self._satisfies(dict(s)))
        entry = self._entry_for("cost", hi, subnet, rank=0)
        entry.update({"weights": dict(weights), "widened": sum(subnet[n] != bisected[n] for n in subnet)})
        if hi + 1 < len(thresholds):
            entry["_neighbour"] = {**self._entry_for("cost", hi + 1, self._subnet_at(keys, thresholds[hi + 1]), 0),
                                   "weights": dict(weights)}
        return entry

    def _subnet_at(self, keys: dict[str, dict[int, PruningKey]], threshold: PruningKey
                   ) -> dict[str, int]:
        subnet = {n: hp.max for n, hp in self._space().named_hparams(True)}
        subnet.update(subnet_for_threshold(keys, threshold))
        return subnet

    def _judge_boundary(self) -> None:
        """Measure the boundary candidates for real and make the best one the result (module doc, 3)."""
        if "cost" in self.config["selection"]:
            self._cost_boundary()
        budget = self.config["boundary_evals"]
        wanted = [e for e in self._boundary if e["order"] in self.config["selection"] and e["satisfied"]]
        # the result of every order first, then their further candidates (by rank), order by order
        wanted.sort(key=lambda e: (e["rank"], self.config["selection"].index(e["order"])))
        seen: list[dict[str, int]] = []
        candidates = []
        for entry in wanted:
            if entry["subnet"] not in seen:
                seen.append(entry["subnet"])
                candidates.append(entry)
        if self.best is None:
            return
        if budget <= 0:  # no real evaluation: the first order's boundary subnet, on its prediction
            lead = self.config["selection"][0]
            if lead != "drop":
                lead_entry = next((e for e in wanted if e["order"] == lead and e["rank"] == 0), None)
                if lead_entry is None:
                    _log.warning("FastNAS: the %r order reaches no subnet within the budget (its choices off the "
                                 "convex hull are never taken); the 'drop' order's subnet is kept", lead)
                else:
                    self._take_boundary(lead_entry, lead_entry["predicted_score"])
            return
        candidates = candidates[:budget]
        if not candidates:
            return
        space = self._space()
        for entry in candidates:
            space.select(entry["subnet"], strict=False)
            entry["score"] = self._measure_score(calibrate=self._bn_mode in ("each", "final"))
            self._boundary_evals += 1
        space.select(self.best["config"], strict=False)
        chosen = max(candidates, key=lambda e: (e["score"], -e["flops"]))
        _log.log(self._log_level, "FastNAS boundary: %d candidates measured, kept the %s order's (score %.6g)",
                 len(candidates), chosen["order"], chosen["score"])
        self._take_boundary(chosen, chosen["score"])

    def _take_boundary(self, entry: dict[str, Any], score: float) -> None:
        """Make a boundary candidate the search's result."""
        assert self.best is not None
        self.best = {**self.best, "config": {**self.best["config"], **entry["subnet"]}, "score": score,
                     "constraints": {n: self._count(n, entry["subnet"]) for n in self.best.get("constraints", {})}}
        self._chosen_order = entry["order"]
