"""A checkpointed FastNAS search on TinyCNN with a real, model-running score (for the SIGKILL test).

``python -m tests.fastnas._kill_worker CKPT OUT [KILL_AT]`` runs the search with checkpoint CKPT and
writes the results to OUT as JSON; with KILL_AT the process SIGKILLs itself inside the KILL_AT-th
score evaluation (no cleanup, no flush: as a crash or an OOM kill would).
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
from modeopt_fastnas import OutputAgreement, prune, random_inputs
from tests.fastnas._models import INPUT_SHAPE, batches, tiny_cnn


def run(checkpoint: str | None, kill_at: int | None = None) -> dict[str, Any]:
    """Run the search; return JSON-able results plus which hparam each evaluation narrowed."""
    torch.set_num_threads(1)
    model = tiny_cnn()
    agreement = OutputAgreement(model, random_inputs((8, *INPUT_SHAPE[1:]), num_batches=1, seed=5))
    model = mo.apply_mode(model, ["fastnas"])
    space = get_search_space(model)
    widest = {n: hp.max for n, hp in space.named_hparams(True)}
    evaluated: list[str] = []

    def score(m: torch.nn.Module) -> float:
        if kill_at is not None and len(evaluated) + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        narrowed = [n for n, v in space.config().items() if v != widest[n]]
        evaluated.append(narrowed[0] if narrowed else "original")
        return agreement(m)

    config: dict[str, Any] = {"score_func": score, "data_loader": batches(8), "verbose": False}
    if checkpoint is not None:
        config["checkpoint"] = checkpoint
    _, res = prune(model, {"flops": "45%"}, torch.zeros(INPUT_SHAPE), config)
    return {
        "subnet": res["subnet"],
        "sensitivity_map": {n: {str(c): d for c, d in m.items()} for n, m in res["sensitivity_map"].items()},
        "evaluated": evaluated,
        "resumed": res["resumed"],
        "num_score_evals_total": res["num_score_evals_total"],
    }


if __name__ == "__main__":
    ckpt, out = sys.argv[1], sys.argv[2]
    result = run(ckpt, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    with open(out, "w") as f:
        json.dump(result, f)
