"""The subnet at the budget: bisect each pruning order, then judge the boundary subnets by real scores.

:class:`BoundarySelector` is the part of :class:`~modeopt_fastnas.BinarySearcher` after the map:

1. ``"drop"`` order (ModelOpt's): the searcher's own iterations bisect the drop thresholds; each step
   is an analytic FLOPs/params count, its score the predicted ``original - threshold``; the visited
   thresholds are recorded (``thresholds_visited``).
2. ``"cost"`` order (see :mod:`.selection`): bisected the same way, analytically.
3. With a ``latency`` limit, the chosen subnet is timed and, while it misses the limit as measured,
   the latency model is refitted and step 1 runs again (``latency_verify``).
4. With ``boundary_evals`` = N > 0, the distinct boundary subnets of the orders in ``selection`` (and,
   while N allows, the next threshold of each: one step more pruned) are measured for real (BN
   re-estimated as for the returned model) and the best score wins. With N = 0 the boundary subnet of
   the first order in ``selection`` is returned on its prediction alone (``("drop",)``, the default:
   ModelOpt's behaviour).
"""

from __future__ import annotations

import logging
from typing import Any

from modeopt_autonas.space import meet_latency_limit

from ._searcher_state import FastNASSearcherState
from .latency import bisectable_thresholds, drop_slower_choices
from .selection import bisect_threshold, cost_keys
from .sensitivity import PruningKey, monotone_drops, pruning_keys, subnet_for_threshold, threshold_candidates

__all__ = ["BoundarySelector"]

_log = logging.getLogger(__name__)


class BoundarySelector(FastNASSearcherState):
    """Mixin of :class:`~modeopt_fastnas.BinarySearcher`: pick the subnet at the budget (module doc)."""

    def _cost_fn(self) -> Any:
        counter = self._counter()
        widest = {n: hp.max for n, hp in self._space().named_hparams(True)}
        full = {"flops": counter.flops(widest) or 1.0, "params": counter.params(widest) or 1.0}
        weight = self.config["params_weight"]

        def cost(name: str, choice: int) -> float:
            subnet = {**widest, name: choice}
            return counter.flops(subnet) / full["flops"] + weight * counter.params(subnet) / full["params"]

        return cost

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
        self._boundary = [self._boundary_entry("drop", thresholds, hi, self._keys)]
        if hi + 1 < len(thresholds):
            self._boundary.append(self._boundary_entry("drop", thresholds, hi + 1, self._keys))
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
                        keys: dict[str, dict[int, PruningKey]]) -> dict[str, Any]:
        counter = self._counter()
        subnet = {n: hp.max for n, hp in self._space().named_hparams(True)}
        subnet.update(subnet_for_threshold(keys, thresholds[index]))
        assert self.original_score is not None
        worst = max((self._drops[n][c] for n, c in subnet.items() if n in self._drops), default=0.0)
        summed = sum(self._drops[n][c] for n, c in subnet.items() if n in self._drops)
        return {
            "order": order, "step": index, "subnet": subnet, "flops": counter.flops(subnet),
            "params": counter.params(subnet), "satisfied": self._satisfies(subnet),
            "predicted_score": self.original_score - worst, "summed_drop": summed, "score": None,
        }

    def _satisfies(self, subnet: dict[str, int]) -> bool:
        return all(self._count(n, subnet) <= limit for n, limit in self.constraints.limits.items())

    def _cost_boundary(self) -> None:
        """Bisect the ``"cost"`` order analytically; add its boundary subnets to the candidates."""
        keys = cost_keys(self._drops, self._cost_fn())
        thresholds = [t for t in threshold_candidates(keys) if t[0] != float("inf")]
        if not thresholds or not self._satisfies(self._subnet_at(keys, thresholds[-1])):
            return  # this order cannot reach the budget (choices off the hull are never taken)
        hi, _ = bisect_threshold(thresholds, lambda t: self._satisfies(self._subnet_at(keys, t)),
                                 max_steps=self.config["num_iters"])
        self._boundary.append(self._boundary_entry("cost", thresholds, hi, keys))
        if hi + 1 < len(thresholds):
            self._boundary.append(self._boundary_entry("cost", thresholds, hi + 1, keys))

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
        # the boundary subnet of every order first, then their one-step-further neighbours
        first = {o: min(e["step"] for e in wanted if e["order"] == o) for o in {e["order"] for e in wanted}}
        wanted.sort(key=lambda e: (e["step"] != first[e["order"]], self.config["selection"].index(e["order"])))
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
                lead_entry = next((e for e in wanted if e["order"] == lead and e["step"] == first.get(lead)), None)
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
