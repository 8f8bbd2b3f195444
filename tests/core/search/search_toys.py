"""A real tiny searchable model and searchers over it, for the searcher-base tests.

``ChoiceNet`` is a one-shot supernet in miniature: each residual block holds pre-built MLPs of several
hidden widths and runs only the selected one, so FLOPs and used parameters change with the selection.

Run as a script (``python -m tests.core.search.search_toys CKPT OUT [KILL_AT]``) it performs a
checkpointed search and writes the results as JSON; with KILL_AT it SIGKILLs itself inside the
KILL_AT-th score evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from modeopt_core.searcher import IterativeSearcher, SearchConfig

WIDTHS = (4, 8, 16, 32)
IN_FEATURES, DIM, NUM_CLASSES, BATCH = 6, 8, 3, 2


class ChoiceBlock(nn.Module):
    """Residual block ``x + mlp_w(x)`` with one pre-built MLP per hidden width ``w``."""

    def __init__(self, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.variants = nn.ModuleDict(
            {str(w): nn.Sequential(nn.Linear(dim, w), nn.ReLU(), nn.Linear(w, dim)) for w in widths}
        )
        self.active = max(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.variants[str(self.active)](x)


class ChoiceNet(nn.Module):
    def __init__(self, num_blocks: int = 3, widths: tuple[int, ...] = WIDTHS, bn: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(IN_FEATURES, DIM)
        self.norm = nn.BatchNorm1d(DIM) if bn else nn.Identity()
        self.blocks = nn.ModuleList(ChoiceBlock(DIM, widths) for _ in range(num_blocks))
        self.head = nn.Linear(DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_net(num_blocks: int = 3, widths: tuple[int, ...] = WIDTHS, bn: bool = False) -> ChoiceNet:
    torch.manual_seed(0)
    return ChoiceNet(num_blocks, widths, bn)


def expected_flops(config: Mapping[str, int], batch: int = BATCH) -> int:
    """2 x MACs by hand: stem, each block's two linears, head."""
    macs = IN_FEATURES * DIM + sum(2 * DIM * w for w in config.values()) + DIM * NUM_CLASSES
    return 2 * batch * macs


def expected_params(config: Mapping[str, int]) -> int:
    blocks = sum(DIM * w + w + w * DIM + DIM for w in config.values())
    return IN_FEATURES * DIM + DIM + blocks + DIM * NUM_CLASSES + NUM_CLASSES


class ScoreOnData:
    """Negative MSE of the model on fixed random data (deterministic); counts its calls."""

    def __init__(self, kill_at: int | None = None) -> None:
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(32, IN_FEATURES, generator=gen)
        self.y = torch.randn(32, NUM_CLASSES, generator=gen)
        self.calls = 0
        self.kill_at = kill_at

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        model.eval()
        with torch.no_grad():
            return -float(torch.nn.functional.mse_loss(model(self.x), self.y))


class RandomChoiceSearcher(IterativeSearcher):
    """Uniform random widths per block; stops early after ``patience`` iterations without a new best."""

    @property
    def default_search_config(self) -> SearchConfig:
        return {**super().default_search_config, "patience": None}

    @property
    def default_state_dict(self) -> dict[str, Any]:
        return {**super().default_state_dict, "since_best": 0}

    def sample(self) -> dict[str, Any]:
        widths = sorted(int(k) for k in self.model.blocks[0].variants)
        config = {f"blocks.{i}": self.rng.choice(widths) for i in range(len(self.model.blocks))}
        self.select(config)
        return config

    def select(self, config: Mapping[str, Any]) -> None:
        for i, block in enumerate(self.model.blocks):
            block.active = int(config[f"blocks.{i}"])

    def current_config(self) -> dict[str, Any]:
        return {f"blocks.{i}": block.active for i, block in enumerate(self.model.blocks)}

    def after_step(self, candidate: dict[str, Any]) -> None:
        self.since_best = 0 if candidate["is_best"] else self.since_best + 1

    def early_stop(self) -> bool:
        patience = self.config["patience"]
        return patience is not None and self.since_best >= patience


class EveryIterationSearcher(RandomChoiceSearcher):
    """Checkpoints after every iteration (no time or overhead throttling)."""

    checkpoint_interval_s = 0.0
    checkpoint_max_overhead = None


def script_search(checkpoint: str | None, kill_at: int | None = None) -> dict[str, Any]:
    """The search the script runs (also run in-process as the uninterrupted reference)."""
    score = ScoreOnData(kill_at)
    results = EveryIterationSearcher().search(
        make_net(),
        {"flops": "70%"},
        torch.randn(BATCH, IN_FEATURES),
        {"score_func": score, "num_iters": 40, "seed": 7, "checkpoint": checkpoint, "verbose": False},
    )
    results["score_calls"] = score.calls
    return results


def _main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    results = script_search(argv[0], int(argv[2]) if len(argv) > 2 else None)
    with open(argv[1], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    _main(sys.argv[1:])
