"""FastNAS sensitivity map on 1 rank vs 2 ranks (``torch.distributed``, gloo, one thread per rank).

The digits CNN (``modeopt_fastnas.digits.DigitsResNet``, trained for ``--epochs`` on scikit-learn's
digits, cached, see ``_common.digits_baseline``) is pruned with ``modeopt_fastnas.prune`` to
``--flops``; score = validation accuracy, batch-norm statistics re-estimated from the first 8
training batches before every score evaluation. Each measurement starts fresh worker processes (one
per rank, a gloo group over a file store) and times the sensitivity map inside rank 0; 1-rank and
2-rank runs alternate so they share the machine's load. The maps, subnets and thresholds of every
run must be identical (checked); the table shows the median map time and the speed-up.

    .venv/bin/python bench/distributed_sensitivity.py [--epochs 5] [--runs 5] [--flops 50%] [--quick]

On a shared machine other jobs inflate the figures: the machine line shows the load, "busiest rank
CPU s" is the process CPU time of the busiest rank (not counting time spent waiting for a core), and
the per-pair speed-ups show the spread.

Internally the script re-runs itself as a worker: ``--worker DIR`` with ``RANK``/``WORLD_SIZE`` set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import digits_baseline, machine_line, markdown_table, reproduce_line

HERE = Path(__file__).resolve().parent
QUICK_WIDTHS = (8, 16, 32)
FULL_WIDTHS = (32, 64, 128)


def worker(workdir: Path, flops: str, widths: tuple[int, int, int]) -> None:
    """One rank: join the group, prune the baseline, rank 0 writes the figures as JSON."""
    import torch.distributed as dist

    import modeopt_core as mo
    from modeopt_core import distributed
    from modeopt_fastnas import prune
    from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders

    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{os.environ['BENCH_STORE']}",
                                rank=int(os.environ["RANK"]), world_size=world)
    model = mo.restore(DigitsResNet(widths), workdir / "baseline.safetensors")
    train, val = digits_loaders(seed=0)
    calib = list(itertools.islice(train, 8))
    distributed.barrier()  # start the clock together
    start, cpu_start = time.perf_counter(), time.process_time()
    _, res = prune(model, {"flops": flops}, torch.zeros(1, 1, 8, 8),
                   {"score_func": lambda m: accuracy(m, val), "data_loader": calib, "verbose": False})
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cpus = distributed.all_gather_objects(cpu)
    if distributed.is_main():
        out = {
            "ranks": world,
            "map_s": res["timings"]["sensitivity_s"],
            "prune_s": total,
            "busiest_cpu_s": max(cpus),
            "evals": res["num_score_evals"],
            "raw": res["sensitivity_raw"],
            "subnet": res["subnet"],
            "threshold": res["threshold"],
            "flops_ratio": res["flops_ratio"],
        }
        (workdir / f"result.{world}.{time.monotonic_ns()}.json").write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def run_once(workdir: Path, world: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start ``world`` worker processes, wait, return rank 0's figures."""
    before = set(workdir.glob(f"result.{world}.*.json"))
    env = {**os.environ, "WORLD_SIZE": str(world), "BENCH_STORE": str(workdir / f"store.{time.monotonic_ns()}"),
           "OMP_NUM_THREADS": "1", "MODEOPT_PROGRESS": "off"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(workdir), "--flops", args.flops]
    if args.quick:
        cmd.append("--quick")
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(rank)}) for rank in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker of the {world}-rank run failed (exit codes {codes})")
    (path,) = set(workdir.glob(f"result.{world}.*.json")) - before
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="baseline training epochs (default 5)")
    parser.add_argument("--runs", type=int, default=5, help="measurements per world size (default 5)")
    parser.add_argument("--flops", default="50%", help="FLOPs budget (default 50%%)")
    parser.add_argument("--quick", action="store_true", help="small CNN, 1 epoch, 1 run (smoke test)")
    parser.add_argument("--cache", default=None, help="baseline cache folder (default ~/.cache/modeopt-bench)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    widths = QUICK_WIDTHS if args.quick else FULL_WIDTHS
    if args.worker is not None:
        worker(args.worker, args.flops, widths)
        return

    import modeopt_core as mo

    torch.set_num_threads(1)
    epochs, runs = (1, 1) if args.quick else (args.epochs, args.runs)
    print(machine_line(1))
    model, seconds = digits_baseline(epochs, cache=args.cache, widths=widths)
    print(f"baseline: DigitsResNet{widths}, {epochs} epochs" + (f" (trained in {seconds:.1f} s)" if seconds else " (cached)"))
    figures: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mo.save(model, workdir / "baseline.safetensors")
        for _ in range(runs):
            for world in (1, 2):  # alternate, so both world sizes see the same machine load
                figures[world].append(run_once(workdir, world, args))
    reference = figures[1][0]
    same = all(f[k] == reference[k] for fs in figures.values() for f in fs for k in ("raw", "subnet", "threshold"))
    one = statistics.median(f["map_s"] for f in figures[1])
    rows = []
    for world, fs in figures.items():
        median = statistics.median(f["map_s"] for f in fs)
        rows.append([world, f"{median:.2f}", " / ".join(f"{f['map_s']:.2f}" for f in fs),
                     f"{statistics.median(f['prune_s'] for f in fs):.2f}",
                     f"{statistics.median(f['busiest_cpu_s'] for f in fs):.2f}", fs[0]["evals"], f"{one / median:.2f}x"])
    print()
    print(markdown_table(["ranks", "sensitivity map s (median)", "runs", "whole prune s", "busiest rank CPU s",
                          "score evals", "speed-up"], rows, align="rrrrrrr"))
    pairs = [a["map_s"] / b["map_s"] for a, b in zip(figures[1], figures[2])]
    print(f"\nspeed-up of each alternating pair: {' / '.join(f'{p:.2f}x' for p in pairs)}")
    print()
    print(f"identical sensitivity map, subnet and threshold on 1 and 2 ranks: {'yes' if same else 'NO'}; "
          f"FLOPs ratio {reference['flops_ratio']:.3f}")
    print(f"speed-up of the sensitivity map with 2 ranks: {one / statistics.median(f['map_s'] for f in figures[2]):.2f}x "
          "(target >= 1.7x)")
    print(f"after: {machine_line(1).removeprefix('machine: ')}")
    print(reproduce_line("distributed_sensitivity.py"))
    if not same:
        raise SystemExit("the sensitivity maps of 1 and 2 ranks differ")


if __name__ == "__main__":
    main()
