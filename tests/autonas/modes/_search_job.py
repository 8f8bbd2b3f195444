"""A search as its own process (for the kill-and-resume test): restore a supernet, search, write JSON.

Usage: python _search_job.py MODEL_CKPT SEARCH_CKPT OUT_JSON NUM_ITERS SCORE_DELAY_S
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import modeopt_core as mo
from modeopt_core.checkpoint import restore

if __package__:
    from ._nas_helpers import DUMMY, SMALL_WIDTHS, accuracy_on, digits_batches, fresh, held_out
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _nas_helpers import DUMMY, SMALL_WIDTHS, accuracy_on, digits_batches, fresh, held_out


def run(model_ckpt: str, search_ckpt: str, num_iters: int, delay: float) -> dict[str, Any]:
    """Restore the supernet, search it, return the JSON-able part of the results."""
    model = restore(fresh(SMALL_WIDTHS), model_ckpt)
    accuracy = accuracy_on(*held_out())

    def score(m: torch.nn.Module) -> float:
        time.sleep(delay)
        return accuracy(m)

    config = {
        "score_func": score,
        "data_loader": digits_batches(4, 64),
        "min_calibration_batches": 4,
        "num_iters": num_iters,
        "population_size": 4,
        "candidate_size": 2,
        "seed": 3,
        "checkpoint": search_ckpt,
        "verbose": False,
    }
    _, result = mo.search(model, {"flops": "60%"}, DUMMY, config)
    keep = ("best", "history", "iterations", "resumed", "subnet")
    return json.loads(json.dumps({k: result[k] for k in keep}))


def main() -> None:
    model_ckpt, search_ckpt, out, num_iters, delay = sys.argv[1:6]
    torch.set_num_threads(1)  # identical arithmetic in every run (the tests run with one thread too)
    result = run(model_ckpt, search_ckpt, int(num_iters), float(delay))
    Path(out).write_text(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
