"""Coverage of the search space over the timm sample (``tests/autonas/zoo/timm_cases.py``): pass rate,
the reasons of every failure, convert times; prints the markdown table of ``docs/architectures.md``.

Each model runs in a subprocess (a crash or a hang costs only itself), one torch thread::

    .venv/bin/python bench/timm_zoo.py [--models NAME ...] [--timeout 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _one(name: str) -> dict:
    import torch

    from tests.autonas.zoo.checks import check_model
    from tests.autonas.zoo.timm_models import build_timm, timm_input

    torch.set_num_threads(1)
    out = check_model(name, build_timm(name), timm_input(name, seed=3))
    return out.__dict__


def main() -> int:
    from tests.autonas.zoo.timm_cases import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="*", help="case names (default: all)")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_one(args.worker)))
        return 0
    cases = [c for c in CASES if not args.models or c.name in args.models]
    rows = []
    for c in cases:
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", c.name], capture_output=True, text=True,
                                  timeout=args.timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
                "name": c.name, "status": "crash", "detail": proc.stderr.strip().splitlines()[-1:]}
        except subprocess.TimeoutExpired:
            row = {"name": c.name, "status": "crash", "detail": f"timeout after {args.timeout:.0f} s"}
        row["family"], row["wall_s"] = c.family, time.perf_counter() - start
        rows.append(row)
        print(f"{c.name:40s} {row['status']:10s} {row.get('hparams', 0):4d} {row.get('convert_s', 0):7.2f}s "
              f"{str(row.get('detail', ''))[:90]}", flush=True)
    passed = sum(r["status"] == "pass" for r in rows)
    print(f"\npass {passed}/{len(rows)} = {passed / max(1, len(rows)):.1%}")
    print(f"families: {len({c.family for c in cases})}; load average {os.getloadavg()}")
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
