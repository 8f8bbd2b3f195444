"""Coverage of the search space over the timm sample (``tests/autonas/zoo/timm_cases.py``): pass rate,
the reasons of every failure, convert times; prints the markdown table of ``docs/architectures.md``.

Models run in a worker subprocess, one after the other (torch and timm are imported once); a model
that crashes the worker or runs past ``--timeout`` costs only itself: the worker is restarted at the
next model. One torch thread::

    .venv/bin/python bench/timm_zoo.py [--models NAME ...] [--timeout 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_RESULT = "@@result "


def _worker(names: list[str]) -> int:
    import warnings

    import torch

    from tests.autonas.zoo.checks import check_model
    from tests.autonas.zoo.timm_models import build_timm, timm_input

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    for name in names:
        print(f"@@start {name}", flush=True)
        try:
            row = check_model(name, build_timm(name), timm_input(name, seed=3)).__dict__
        except Exception as exc:  # building the model itself failed
            row = {"name": name, "status": "crash", "detail": f"build: {type(exc).__name__}: {exc}"}
        print(_RESULT + json.dumps(row), flush=True)
    return 0


def _run_all(names: list[str], timeout: float) -> list[dict]:
    """Results in order; restarts the worker after a crash or a timeout."""
    rows: dict[str, dict] = {}
    todo = list(names)
    while todo:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", *todo], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        current, started, pending, eof = None, time.perf_counter(), b"", False
        while not eof:
            # Raw reads (no buffered readline): a line already buffered in Python would not wake select().
            if not sel.select(timeout=max(0.1, timeout - (time.perf_counter() - started))):
                if current is not None and time.perf_counter() - started >= timeout:
                    proc.kill()
                    rows[current] = {"name": current, "status": "crash", "detail": f"timeout after {timeout:.0f} s",
                                     "wall_s": time.perf_counter() - started}
                    _print(rows[current])
                    break
                continue
            chunk = os.read(fd, 1 << 16)
            eof = not chunk
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line.startswith("@@start "):
                    current, started = line.split(" ", 1)[1].strip(), time.perf_counter()
                elif line.startswith(_RESULT):
                    row = json.loads(line[len(_RESULT):])
                    row["wall_s"] = time.perf_counter() - started
                    rows[row["name"]] = row
                    _print(row)
                    current = None
        if eof and current is not None and current not in rows:
            rows[current] = {"name": current, "status": "crash", "wall_s": time.perf_counter() - started,
                             "detail": f"worker died (exit code {proc.wait()})"}
            _print(rows[current])
        proc.wait()
        todo = [n for n in todo if n not in rows]
    return [rows[n] for n in names]


def _print(row: dict) -> None:
    print(f"{row['name']:40s} {row['status']:10s} {row.get('hparams', 0):4d} {row.get('convert_s', 0):7.2f}s "
          f"{row.get('wall_s', 0):6.1f}s {str(row.get('detail', ''))[:90]}", flush=True)


def main() -> int:
    from tests.autonas.zoo.timm_cases import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="*", help="case names (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model (default 300)")
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)
    unknown = sorted(set(args.models or ()) - {c.name for c in CASES})
    if unknown:
        parser.error(f"not in the sample: {unknown}")
    cases = [c for c in CASES if not args.models or c.name in args.models]
    family = {c.name: c.family for c in cases}
    rows = _run_all([c.name for c in cases], args.timeout)
    for r in rows:
        r["family"] = family[r["name"]]
    passed = sum(r["status"] == "pass" for r in rows)
    print(f"\npass {passed}/{len(rows)} = {passed / max(1, len(rows)):.1%}")
    print(f"families: {len(set(family.values()))}; load average {os.getloadavg()}")
    print("\n| model | family | status | hparams | convert | what stays frozen / why it fails |\n|---|---|---|---|---|---|")
    for r in rows:
        why = r.get("detail") or "; ".join(r.get("frozen", [])[:2]) or "-"
        why = str(why).replace("|", "/").replace("\n", " ")[:160]
        print(f"| {r['name']} | {r['family']} | {r['status']} | {r.get('hparams', 0)} | "
              f"{r.get('convert_s', 0):.2f} s | {why} |")
    print(f"\nreproduce: .venv/bin/python bench/timm_zoo.py{' --models ' + ' '.join(args.models) if args.models else ''}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
