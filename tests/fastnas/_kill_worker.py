"""A checkpointed FastNAS search on TinyCNN with a real, model-running score (for the SIGKILL test).

``python -m tests.fastnas._kill_worker CKPT OUT [KILL_AT] [--downstream]`` runs the search with checkpoint
CKPT and writes the results to OUT as JSON; with KILL_AT the process SIGKILLs itself inside the KILL_AT-th
score evaluation (no cleanup, no flush: as a crash or an OOM kill would). ``--downstream`` scores with a
``BatchScore``, so entries are evaluated downstream-only from records of the upstream activations.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch

import modeopt_core as mo
from modeopt_autonas.space import get_search_space
from modeopt_fastnas import BatchScore, OutputAgreement, prune, random_inputs
from tests.fastnas._models import INPUT_SHAPE, batches, tiny_cnn


class _Counting(BatchScore):
    """The agreement score, with a hook on every evaluation (also downstream-only ones)."""

    def __init__(self, agreement: OutputAgreement, on_eval: Any) -> None:
        self.inputs, self.agreement, self.on_eval = agreement.inputs, agreement, on_eval

    def score_outputs(self, outputs: Any) -> float:
        self.on_eval()
        return self.agreement.score_outputs(outputs)


def run(checkpoint: str | None, kill_at: int | None = None, downstream: bool = False) -> dict[str, Any]:
    """Run the search; return JSON-able results plus which hparam each evaluation narrowed."""
    torch.set_num_threads(1)
    model = tiny_cnn()
    agreement = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=5))
    model = mo.apply_mode(model, ["fastnas"])
    space = get_search_space(model)
    widest = {n: hp.max for n, hp in space.named_hparams(True)}
    evaluated: list[str] = []

    def note() -> None:
        if kill_at is not None and len(evaluated) + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        narrowed = [n for n, v in space.config().items() if v != widest[n]]
        # importance="auto" first scores a probe subnet per ranking (every width narrowed)
        evaluated.append("probe" if len(narrowed) > 1 else narrowed[0] if narrowed else "original")

    def score(m: torch.nn.Module) -> float:
        note()
        return agreement(m)

    config: dict[str, Any] = {"score_func": _Counting(agreement, note) if downstream else score,
                              "data_loader": batches(8), "verbose": False,
                              # the map calibrates on batches 0, 2, 4, 6: a resumed search draws the same share
                              "min_calibration_batches": 4, "map_calibration_samples": 48}
    if checkpoint is not None:
        config["checkpoint"] = checkpoint
    _, res = prune(model, {"flops": "45%"}, torch.zeros(INPUT_SHAPE), config)
    return {
        "subnet": res["subnet"],
        "sensitivity_map": {n: {str(c): d for c, d in m.items()} for n, m in res["sensitivity_map"].items()},
        "evaluated": evaluated,
        "resumed": res["resumed"],
        "num_score_evals_total": res["num_score_evals_total"],
        "downstream_groups": res["timings"].get("downstream_recorded_groups", 0),
        "map_calibration_batches": res["map_calibration_batches"],
        "importance": res["importance"],
        "importance_probe": res["importance_probe"],
    }


if __name__ == "__main__":
    ckpt, out = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    downstream = "--downstream" in rest
    numbers = [a for a in rest if a != "--downstream"]
    result = run(ckpt, int(numbers[0]) if numbers else None, downstream)
    with open(out, "w") as f:
        json.dump(result, f)
