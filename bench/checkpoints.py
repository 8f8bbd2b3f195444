"""Checkpoint save/restore time, file size and peak memory: ``modeopt_core.save/restore`` vs torch and safetensors.

Models: torchvision ResNet-50 (plain, and converted by ``fastnas``, whose mode state is saved too) and
an MLP stack of 18 ``Linear(4096, 4096)`` layers (302M parameters, 1.2 GB in fp32). Every
(model, format, operation) runs in its own child process that holds the model in memory, so the
memory figures are the *extra* memory of the operation on top of the model:

* peak RSS: the kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before
  each run) minus the RSS before the run. It counts pages of memory-mapped files that were read;
* peak anon: the largest anonymous RSS (``RssAnon``: real allocations, no file pages) seen by the
  parent polling ``/proc/<child>/status`` every millisecond during the run, minus the value before.

Restores read a file that was just written (in the page cache); ``mmap`` loaders then map cached
pages. ``torch.load`` always uses ``weights_only=True``.

A second table times ``modeopt save`` against ``torch.save`` of ResNet-50 in *one* process, the
operations interleaved (rotating who goes first) so that they share the machine's load; median of
``--ratio-runs`` (default 5) after a warm-up, with the ratio (the target is <= 1.2). ``--ratio`` runs
only that table.

    .venv/bin/python bench/checkpoints.py [--runs 3] [--models resnet50,resnet50+fastnas,mlp300m] [--ratio] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_common_args,
    fmt_bytes,
    machine_line,
    markdown_table,
    reproduce_line,
    set_threads,
)
from torch import nn

# (format, operation) pairs; a save leaves the file its loads read.
_FORMATS = {
    "modeopt": ("modeopt save", "modeopt restore"),
    "torch": ("torch.save", "torch.load", "torch.load mmap"),
    "safetensors": ("save_file", "load_file"),
}
_MODELS = ("resnet50", "resnet50+fastnas", "mlp300m")


def _build(name: str) -> nn.Module:
    """The model named ``name``, with every parameter page touched (so it is part of the baseline RSS)."""
    torch.manual_seed(0)
    if name.startswith("mlp"):
        width, depth = {"mlp300m": (4096, 18), "mlp-tiny": (256, 4)}[name]
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [torch.nn.utils.skip_init(nn.Linear, width, width), nn.ReLU()]
        model = nn.Sequential(*layers)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.01)
        return model
    import torchvision

    import modeopt_core as mo

    base, _, mode = name.partition("+")
    model = getattr(torchvision.models, base)(weights=None)
    return mo.apply_mode(model, [mode]) if mode else model


def _fresh(name: str) -> nn.Module:
    """A model to restore into: built from scratch (restore re-applies the modes itself)."""
    return _build(name.partition("+")[0])


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _operation(op: str, model_name: str, path: str) -> Any:
    """A zero-argument callable doing ``op`` (setup outside it is not timed)."""
    import safetensors.torch

    import modeopt_core as mo

    if op in ("modeopt save", "torch.save", "save_file"):
        model = _build(model_name)
        if op == "modeopt save":
            return lambda: mo.save(model, path)
        if op == "torch.save":
            return lambda: torch.save(model.state_dict(), path)
        return lambda: safetensors.torch.save_file(model.state_dict(), path)
    if op == "modeopt restore":
        models = []

        def restore() -> None:
            mo.restore(models.pop(), path)

        restore.prepare = lambda: models.append(_fresh(model_name))  # type: ignore[attr-defined]
        return restore
    model = _build(model_name)
    if op == "torch.load":
        return lambda: model.load_state_dict(torch.load(path, weights_only=True))
    if op == "torch.load mmap":
        return lambda: model.load_state_dict(torch.load(path, weights_only=True, mmap=True))
    return lambda: model.load_state_dict(safetensors.torch.load_file(path))


_RATIO_OPS = ("torch.save", "modeopt save", "modeopt save durable", "torch.load", "torch.load mmap", "modeopt restore")


def _ratio_child(spec: dict[str, Any]) -> None:
    """Time the :data:`_RATIO_OPS` round-robin in this one process; print their wall times as JSON."""
    import modeopt_core as mo

    set_threads(spec["threads"])
    model, name, folder = _build(spec["model"]), spec["model"], Path(spec["path"])
    torch_path, mo_path = folder / "ratio.pt", folder / "ratio.safetensors"
    ops: dict[str, Any] = {
        "torch.save": lambda: torch.save(model.state_dict(), torch_path),
        "modeopt save": lambda: mo.save(model, mo_path),
        "modeopt save durable": lambda: mo.save(model, mo_path, durable=True),
        "torch.load": lambda: model.load_state_dict(torch.load(torch_path, weights_only=True)),
        "torch.load mmap": lambda: model.load_state_dict(torch.load(torch_path, weights_only=True, mmap=True)),
    }
    fresh: list[nn.Module] = []
    ops["modeopt restore"] = lambda: mo.restore(fresh.pop(), mo_path)
    times: dict[str, list[float]] = {op: [] for op in _RATIO_OPS}
    for i in range(spec["runs"] + 1):  # round 0 is the warm-up
        order = list(_RATIO_OPS[i % len(_RATIO_OPS):] + _RATIO_OPS[: i % len(_RATIO_OPS)])
        for op in sorted(order, key=lambda o: "load" in o or "restore" in o):  # saves first: loads read them
            if op == "modeopt restore":
                fresh.append(_fresh(name))
            gc.collect()
            t0 = time.perf_counter()
            ops[op]()
            if i:
                times[op].append(time.perf_counter() - t0)
    print(json.dumps(times))


def _ratio_table(model: str, folder: str, runs: int, threads: int) -> str:
    spec = json.dumps({"model": model, "path": folder, "runs": runs, "threads": threads})
    out = subprocess.run([sys.executable, __file__, "--ratio-child", spec], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    times = json.loads(out.strip().splitlines()[-1])
    med = {op: statistics.median(v) for op, v in times.items()}
    rows = []
    for op in _RATIO_OPS:
        ref = med["torch.save"] if "save" in op else med["torch.load"]
        rows.append([op, f"{1e3 * med[op]:.1f}", f"{1e3 * min(times[op]):.1f}", f"{med[op] / ref:.2f}x"])
    table = markdown_table(["operation", "median ms", "best ms", "vs torch.save / torch.load"], rows, align="lrrr")
    ratio = med["modeopt save"] / med["torch.save"]
    return (f"## {model}: save and restore vs torch in one process, interleaved (median of {runs})\n\n{table}\n\n"
            f"modeopt save / torch.save = {ratio:.2f} (target <= 1.2); with durable=True (fsync) "
            f"{med['modeopt save durable'] / med['torch.save']:.2f}; modeopt restore / torch.load = "
            f"{med['modeopt restore'] / med['torch.load']:.2f} (restore verifies the digest and the fit first)")


def _child(spec: dict[str, Any]) -> None:
    """Run each operation ``runs + 1`` times (the first is a warm-up); print the measurements as JSON."""
    set_threads(spec["threads"])
    out: dict[str, list[dict[str, float]]] = {}
    for op in spec["ops"]:
        fn = _operation(op, spec["model"], spec["path"])
        records = out.setdefault(op, [])
        for _ in range(spec["runs"] + 1):
            if hasattr(fn, "prepare"):
                fn.prepare()
            gc.collect()
            _reset_peak()
            before = _status()
            t0, c0 = time.monotonic(), time.process_time()
            fn()
            t1, c1 = time.monotonic(), time.process_time()
            after = _status()
            records.append({
                "start": t0, "end": t1, "wall": t1 - t0, "cpu": c1 - c0,
                "rss_before": before["VmRSS"], "anon_before": before["RssAnon"],
                "hwm": after["VmHWM"], "anon_after": after["RssAnon"],
            })
            gc.collect()
        del fn
    print(json.dumps(out))


class _Poller(threading.Thread):
    """Samples ``RssAnon`` of process ``pid`` every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.stop.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.samples.append((time.monotonic(), int(line.split()[1]) * 1024))
                            break
            except (OSError, ValueError):
                return
            time.sleep(self.interval)


def _run_child(ops: list[str], model: str, path: Path, runs: int, threads: int) -> dict[str, dict[str, float]]:
    """Run ``ops`` in one child process; per op: median wall/CPU seconds and the largest extra memory."""
    spec = json.dumps({"ops": ops, "model": model, "path": str(path), "runs": runs, "threads": threads})
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.PIPE, text=True)
    poller = _Poller(proc.pid)
    poller.start()
    out, _ = proc.communicate()
    poller.stop.set()
    poller.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child for {ops} on {model} failed with exit code {proc.returncode}")
    results = {}
    for op, all_records in json.loads(out.strip().splitlines()[-1]).items():
        records = all_records[1:]  # drop the warm-up run
        anon_peaks = []
        for r in records:
            seen = [v for t, v in poller.samples if r["start"] <= t <= r["end"]] + [r["anon_after"]]
            anon_peaks.append(max(seen) - r["anon_before"])
        results[op] = {
            "wall": statistics.median(r["wall"] for r in records),
            "cpu": statistics.median(r["cpu"] for r in records),
            "peak_rss": max(r["hwm"] - r["rss_before"] for r in records),
            "peak_anon": max(anon_peaks),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--models", default=",".join(_MODELS), help="comma-separated: " + ", ".join(_MODELS))
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--ratio", action="store_true", help="only the interleaved save/restore vs torch table")
    parser.add_argument("--ratio-runs", type=int, default=5, help="timed rounds of that table (default 5)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ratio-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    if args.ratio_child:
        _ratio_child(json.loads(args.ratio_child))
        return 0
    set_threads(args.threads)
    ratio_model, ratio_runs = ("mlp-tiny", 1) if args.quick else ("resnet50", args.ratio_runs)
    if args.ratio:
        print(machine_line(args.threads) + "\n")
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print(_ratio_table(ratio_model, tmp, ratio_runs, args.threads))
        print(machine_line(args.threads).replace("machine:", "after:"))
        print(reproduce_line("checkpoints.py", argv))
        return 0
    models = ["mlp-tiny"] if args.quick else args.models.split(",")
    runs = 1 if args.quick else args.runs
    print(f"# Checkpoint save/restore (median of {runs} after 1 warm-up, each in its own process)\n")
    print(machine_line(args.threads) + "\n")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for model in models:
            formats = ["modeopt"] if "+" in model else list(_FORMATS)  # torch/safetensors keep no mode state
            if args.quick:
                formats = ["modeopt", "torch"]
            params = sum(p.numel() for p in _build(model).parameters())
            for fmt in formats:
                path = Path(tmp) / f"{model}.{fmt}"
                ops = list(_FORMATS[fmt])
                # one process per operation (the allocator keeps no memory from an earlier one), except
                # with --quick, where process start-up would dominate
                batches = [ops] if args.quick else [[op] for op in ops]
                measured = {k: v for batch in batches for k, v in _run_child(batch, model, path, runs,
                                                                                 args.threads).items()}
                size = path.stat().st_size
                for op in ops:
                    m = measured[op]
                    rows.append([
                        f"{model} ({params / 1e6:.0f}M)", fmt, op, f"{m['wall']:.3f}", f"{m['cpu']:.3f}",
                        f"{size / 2**30 / m['wall']:.2f}", fmt_bytes(size),
                        fmt_bytes(max(m["peak_rss"], 0)), fmt_bytes(max(m["peak_anon"], 0)),
                    ])
                os.remove(path)
        ratio = _ratio_table(ratio_model, tmp, ratio_runs, args.threads)
    headers = ["model", "format", "operation", "wall s", "CPU s", "GiB/s", "file", "peak extra RSS",
               "peak extra anon"]
    print(markdown_table(headers, rows, align="lll" + "r" * 6))
    print("\nmodeopt restore = check the file's digest and the fit with the model, re-apply the modes, load "
          "tensor by tensor from a memory map (building the fresh model is not timed). GiB/s = file size / wall.")
    print("\n" + ratio)
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("checkpoints.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
