"""Start a real process group: one ``python -m tests.distributed._worker`` subprocess per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Launch:
    """``scenarios`` running on ``world_size`` ranks (gloo, CPU, one thread each); :meth:`wait` for them.

    With ``kill_at`` rank 0 SIGKILLs itself inside that score call; the other ranks, then stuck or
    failing in a collective, are killed too (as torchrun would). ``worker`` is the module each rank runs
    (``python -m WORKER WORKDIR SCENARIO...``; other test packages bring their own scenarios).
    """

    def __init__(
        self, workdir: Path, scenarios: list[str], world_size: int = 2, *, kill_at: int | None = None,
        timeout: float = 240.0, worker: str = "tests.distributed._worker",
    ) -> None:
        self.scenarios, self.kill_at, self.timeout = scenarios, kill_at, timeout
        store = workdir / f"store.{time.monotonic_ns()}"
        env = {**os.environ, "WORLD_SIZE": str(world_size), "MODEOPT_TEST_STORE": str(store),
               "OMP_NUM_THREADS": "1", "MODEOPT_PROGRESS": "off"}
        if kill_at is not None:
            env["MODEOPT_TEST_KILL_AT"] = str(kill_at)
        self.logs = [workdir / f"rank{rank}.{store.name}.log" for rank in range(world_size)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for rank, log in enumerate(self.logs):
            with open(log, "w") as out:  # a file, not a pipe: a chatty rank can never block on a full pipe
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", worker, str(workdir), *scenarios],
                    cwd=ROOT, env={**env, "RANK": str(rank)}, stdout=out, stderr=subprocess.STDOUT,
                ))
        self.deadline = time.monotonic() + timeout

    def wait(self) -> list[int]:
        """The ranks' exit codes; raises with their logs if a rank failed or hung (unless killing)."""
        timed_out = False
        try:
            self.procs[0].wait(timeout=max(1.0, self.deadline - time.monotonic()))
            grace = 20.0 if self.kill_at is not None else self.timeout
            for proc in self.procs[1:]:
                proc.wait(timeout=max(1.0, min(grace, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            timed_out = self.kill_at is None
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        codes = [p.returncode for p in self.procs]
        if timed_out or (self.kill_at is None and any(codes)):
            text = "\n".join(f"--- rank {r} (exit {c}):\n{log.read_text()[-4000:]}" for r, (c, log) in
                             enumerate(zip(codes, self.logs)))
            why = f"did not finish within {self.timeout:.0f} s (a hang?)" if timed_out else "failed"
            raise AssertionError(f"distributed run of {self.scenarios} {why}:\n{text}")
        return codes


def launch(workdir: Path, scenarios: list[str], world_size: int = 2, **kwargs: Any) -> list[int]:
    """Run ``scenarios`` on ``world_size`` ranks and wait for them (see :class:`Launch`)."""
    return Launch(workdir, scenarios, world_size, **kwargs).wait()


def results(workdir: Path, scenario: str, world_size: int = 2) -> list[dict[str, Any]]:
    """The JSON results each rank wrote for ``scenario``."""
    return [json.loads((workdir / f"{scenario}.rank{r}.json").read_text()) for r in range(world_size)]
