"""A process SIGKILLed in the middle of ``save`` leaves the previous checkpoint intact and loadable."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest

from modeopt_core._atomic import temporary_pattern
from modeopt_core.checkpoint import inspect_checkpoint, restore
from tests.core.checkpoint.ckpt_sigkill_child import build, save_forever

ROUNDS = 12
MAX_ROUNDS = 40  # a loaded machine makes kills land less precisely: keep going until enough did


@pytest.fixture(scope="module")
def ctx() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.core.checkpoint.ckpt_sigkill_child"])
    return context


def _wait(condition: Any, proc: Any, deadline: float) -> None:
    while not condition():
        assert proc.is_alive(), f"child died with exit code {proc.exitcode}"
        assert time.monotonic() < deadline, "child made no progress"


def _run_and_kill(ctx: Any, path: Path, first: int, rng: random.Random, *, during_write: bool) -> tuple[int, int, bool]:
    # lock=False: a child killed while holding a lock would block every later read.
    started, done, writing, write_ns = (ctx.Value("q", v, lock=False) for v in (-1, -1, 0, 0))
    proc = ctx.Process(target=save_forever, args=(str(path), first, started, done, writing, write_ns), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 120
        _wait(lambda: done.value >= first, proc, deadline)
        t0 = time.monotonic()
        _wait(lambda: done.value >= first + 1, proc, deadline)
        one_save = time.monotonic() - t0
        if during_write:  # aim at the write itself: kill a moment after the writer was entered
            _wait(lambda: writing.value == 1, proc, deadline)
            delay = rng.uniform(0.0, 1.0) * write_ns.value / 1e9
        else:  # any phase: the loop is almost all save()
            delay = rng.uniform(0.0, 1.5) * one_save
        end = time.monotonic() + delay
        while time.monotonic() < end:
            pass
    finally:
        proc.kill()  # SIGKILL
        proc.join()
    return started.value, done.value, writing.value == 1


def test_sigkill_during_save_leaves_a_loadable_file(tmp_path: Path, ctx: Any) -> None:
    rng = random.Random(1234)
    path = tmp_path / "ckpt.safetensors"
    first, mid_save, mid_write, round_, most_strays = 0, 0, 0, 0, 0
    while round_ < ROUNDS or (round_ < MAX_ROUNDS and (mid_write < 2 or mid_save < ROUNDS // 2)):
        last_start, last_done, in_write = _run_and_kill(ctx, path, first, rng, during_write=round_ % 2 == 1)
        mid_save += last_start > last_done
        mid_write += in_write
        info = inspect_checkpoint(path)
        assert info.intact, info.diagnosis
        model = restore(build(), path)
        values = {float(v) for p in model.parameters() for v in p.detach().unique()}
        assert len(values) == 1, f"a mix of saves in one file: {sorted(values)[:5]}"
        # The kill may land after the rename but before ``done`` was updated.
        assert values <= {float(last_done), float(last_start)}
        # at most one stray temporary per kill, and the next save (the next child's) removes it
        strays = [p for p in tmp_path.iterdir() if temporary_pattern(path).fullmatch(p.name)]
        assert len(strays) <= 1, strays
        most_strays = max(most_strays, len(strays))
        first = last_start + 1
        round_ += 1
    assert mid_save >= ROUNDS // 2, f"only {mid_save} of {round_} kills landed inside save()"
    assert mid_write >= 2, f"only {mid_write} kills landed while the file was being written"
    assert not any(p.suffix == ".safetensors" and p != path for p in tmp_path.iterdir())
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())  # no safetensors writer temporaries
    assert most_strays == 1, "no kill left a temporary: the kills did not land inside writes"
