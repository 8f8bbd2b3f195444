"""FastNAS beside NVIDIA ModelOpt 0.47 in one run: digits CNN to 50%/30% FLOPs, ResNet-18 to 60%, import time.

Workloads (those of issue 15, ModelOpt's own FastNAS on the same model, weights and data):

* ``digits``: ``DigitsResNet`` (32/64/128) on scikit-learn's digits upsampled to 16x16 (52.6 MFLOPs),
  trained ``--epochs`` (cached); score = validation accuracy (``AccuracyScore``), calibration =
  the training set in a fixed order. Three settings: BN re-estimated per evaluation from the
  75-batch loader (batch 16; ModelOpt uses its first 50 batches, so ours does too), the 19-batch
  loader (batch 64: ModelOpt silently skips re-estimation there; ours re-estimates from all 19),
  and neither re-estimating (``bn_calibration="off"``). ModelOpt runs with divisor-8 rules (its
  default divisor 32 cannot reach 50% on this CNN). Figures: search seconds, score evaluations,
  FLOPs/params kept, accuracy straight out, and after a fixed 5-epoch fine-tune (``--finetune``).
* ``resnet18``: torchvision ResNet-18 (random weights) to 60% FLOPs, data-free output agreement on
  2x8 random 128x128 samples (``OutputAgreement``), both with default rules.
* ``import``: ``import modeopt_core, modeopt_fastnas`` / ``import modelopt.torch.prune`` against
  ``import torch`` in fresh interpreters (median of ``--import-runs``).
* ``load``: ``load_state_dict`` of a ResNet-50 state dict into a plain model and into one converted
  with ``fastnas`` (interleaved, median of 7).

ModelOpt runs in a subprocess (``bench/_modelopt_fastnas.py``) with ``--modelopt-python`` (default
``$MODELOPT_PYTHON``, else ``/work/venv-modelopt/bin/python``): a separate venv holding
``nvidia-modelopt==0.47.*`` and ``torchprofile==0.0.4``. Without it, only our figures are printed.

    .venv/bin/python bench/vs_modelopt.py [--parts digits,resnet18,import] [--budgets 50%,30%] [--runs 1]
                                          [--finetune] [--modelopt-python PATH] [--quick]
"""

from __future__ import annotations

import argparse
import copy
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
from _common import (
    add_common_args,
    digits_baseline,
    finetune_accuracies,
    machine_line,
    markdown_table,
    measure_interleaved,
    reproduce_line,
    set_threads,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeopt_core as mo
from modeopt_core.constraints import ForwardProfiler
from modeopt_fastnas import AccuracyScore, OutputAgreement, prune, random_inputs
from modeopt_fastnas.digits import accuracy, digits_loaders

_PARTS = ("digits", "resnet18", "import", "load")
_SETTINGS = {  # name: (calibration batch size, our bn_calibration, ModelOpt re-estimates?)
    "BN per evaluation, 75-batch loader": (16, "each"),
    "BN per evaluation (ours), 19-batch loader": (64, "each"),
    "neither re-estimating": (64, "off"),
}
_WORKER = Path(__file__).with_name("_modelopt_fastnas.py")


def _modelopt_python(path: str | None) -> str | None:
    if path is not None:  # given explicitly: that one or none
        return path if Path(path).exists() else None
    for candidate in (os.environ.get("MODELOPT_PYTHON"), "/work/venv-modelopt/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _run_modelopt(python: str, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([python, str(_WORKER), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _counts(model: nn.Module, dummy: torch.Tensor) -> tuple[float, float]:
    counts = ForwardProfiler(model, dummy).measure(("flops", "params"))
    return counts["flops"], counts["params"]


_VARIANTS: dict[str, dict[str, Any]] = {  # --ours: our search-config variants beside the defaults
    "defaults": {},
    "activation": {"importance": "activation"},
    "cost+boundary": {"selection": ("drop", "cost"), "boundary_evals": 4},
    "activation+cost+boundary": {"importance": "activation", "selection": ("drop", "cost"), "boundary_evals": 4},
    "weight": {"importance": "weight"},  # the default ranking before importance="contribution"
    "cost": {"selection": "cost"},
    "contribution+cost": {"importance": "contribution", "selection": "cost"},
    "contribution+stages2": {"importance": "contribution", "stages": 2},
    "stages2": {"stages": 2},  # prune(..., stages=2): a second map of the first stage's result
    "activation+stages2": {"importance": "activation", "stages": 2},
    # a joint budget: the FLOPs budget and, as the params limit, the params ModelOpt kept (run after it)
    "cost+modelopt-params": {"selection": "cost"},
    "modelopt-params": {},
}
_AFTER_MODELOPT = {"cost+modelopt-params", "modelopt-params"}


def _ours_digits(baseline: nn.Module, budget: str, batch_size: int, bn: str, finetune: int, shuffles: int,
                 image_size: int, extra: dict[str, Any] | None = None,
                 params_limit: float | None = None) -> dict[str, Any]:
    train, val = digits_loaders(seed=0, image_size=image_size)
    x, y = train.dataset.tensors  # type: ignore[attr-defined]
    calib = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    dummy = torch.zeros(1, 1, image_size, image_size)
    base_flops, base_params = _counts(baseline, dummy)
    extra = dict(extra or {})
    stages = extra.pop("stages", 1)
    start = time.perf_counter()
    constraints = {"flops": budget, **({"params": f"{100 * params_limit:.2f}%"} if params_limit else {})}
    model, res = prune(copy.deepcopy(baseline), constraints, dummy, {
        "score_func": AccuracyScore(val), "data_loader": calib, "max_iter_data_loader": 50,
        "bn_calibration": bn, "verbose": False, **extra}, stages=stages)
    seconds = time.perf_counter() - start
    model = mo.export(model)
    flops, params = _counts(model, dummy)
    out = {"search_s": seconds, "score_evals": res["num_score_evals"], "flops_ratio": flops / base_flops,
           "params_ratio": params / base_params, "accuracy_out": accuracy(model, val),
           "boundary_evals": res.get("boundary_evals", 0), "timings": res["timings"],
           "ranking": _ranking(res)}
    if finetune:
        out["finetuned"] = finetune_accuracies(model, train.dataset, val, finetune, shuffles)
    return out


def _ranking(res: dict[str, Any]) -> str:
    """The channel ranking the search used, with importance="auto"'s probe scores."""
    probe = res.get("importance_probe") or {}
    return res["importance"] + (f" (probe {', '.join(f'{k} {v:.4g}' for k, v in probe.items())})" if probe else "")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs if key in r)


def _cell(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    values = [r[key] for r in runs if key in r]
    return format(statistics.median(values), fmt) if values else "-"


def _finetuned_cell(runs: list[dict[str, Any]]) -> str:
    """The median fine-tuned accuracy over runs and shuffles, with the range when there are several."""
    values = [a for r in runs for a in r.get("finetuned", [])]
    if not values:
        return "-"
    median = f"{statistics.median(values):.2f}"
    return median if len(values) == 1 else f"{median} ({min(values):.2f}-{max(values):.2f})"


def _digits(args: argparse.Namespace, python: str | None) -> list[list[str]]:
    baseline, _ = digits_baseline(args.epochs, cache=args.cache, image_size=16, lr=args.lr,
                                  widths=(8, 16, 16) if args.quick else (32, 64, 128))
    _, val = digits_loaders(seed=0, image_size=16)
    print(f"digits baseline: {args.epochs} epochs, val accuracy {accuracy(baseline, val):.2f}%")
    if args.finetune:  # the control: what the same fine-tune does to the unpruned baseline
        control = finetune_accuracies(baseline, digits_loaders(seed=0, image_size=16)[0].dataset, val,
                                      args.finetune_epochs, args.finetune_shuffles)
        print(f"baseline after the same fine-tune: {_finetuned_cell([{'finetuned': control}])}")
    print()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "baseline.safetensors"
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in baseline.state_dict().items()}, str(weights))
        settings = list(_SETTINGS.items())[:1] if args.quick else list(_SETTINGS.items())
        reused: dict[tuple[int, str, int], dict[str, Any]] = {}  # ModelOpt's run per (loader, budget, fine-tune)
        for setting, (batch_size, bn) in settings:
            for budget in args.budgets.split(","):
                variants = args.ours.split(",")
                ours_by: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
                theirs = []
                finetune = args.finetune_epochs if args.finetune and bn == "each" and batch_size == 16 else 0
                for _ in range(args.runs):  # interleaved: both see the same load
                    for variant in (v for v in variants if v not in _AFTER_MODELOPT):
                        ours_by[variant].append(_ours_digits(baseline, budget, batch_size, bn, finetune, args.finetune_shuffles, 16,
                                                             _VARIANTS[variant]))
                    key = (batch_size, budget, finetune)
                    if python is not None and not args.quick and (key not in reused or args.runs > 1):
                        reused[key] = _run_modelopt(python, [
                            "digits", "--baseline", str(weights), "--budget", budget, "--calib-batch-size",
                            str(batch_size), "--threads", str(args.threads),
                            *(["--finetune-epochs", str(finetune), "--finetune-shuffles", str(args.finetune_shuffles)]
                              if finetune else [])])
                    if key in reused:
                        theirs.append(reused[key])
                    kept = reused.get(key, {}).get("params_ratio")
                    for variant in (v for v in variants if v in _AFTER_MODELOPT and kept):
                        ours_by[variant].append(_ours_digits(baseline, budget, batch_size, bn, finetune, args.finetune_shuffles, 16,
                                                             _VARIANTS[variant], params_limit=kept))
                theirs = [t for t in theirs if "error" not in t] or theirs
                ratios = {v: (f"{_median(r, 'search_s') / _median(theirs, 'search_s'):.2f}"
                              if theirs and "search_s" in theirs[0] else "-") for v, r in ours_by.items()}
                entries = [(f"modeopt ({v})" if v != "defaults" else "modeopt", r, ratios[v]) for v, r in ours_by.items()]
                for who, runs, ratio in (*entries, ("ModelOpt 0.47", theirs, "")):
                    if not runs:
                        continue
                    if "error" in runs[0]:
                        rows.append([setting, budget, who, f"failed: {runs[0]['error']}", *["-"] * 7])
                        continue
                    rows.append([
                        setting, budget, who, _cell(runs, "search_s", ".1f"), _cell(runs, "score_evals", ".0f"),
                        _cell(runs, "flops_ratio", ".1%"), _cell(runs, "params_ratio", ".1%"),
                        _cell(runs, "accuracy_out", ".2f"), _finetuned_cell(runs),
                        _cell(runs, "boundary_evals", ".0f"), ratio,
                    ])
                for r in ours_by[variants[0]]:
                    t = r["timings"]
                    print(f"  ours {setting} {budget}: sensitivity {t.get('sensitivity_s', 0):.1f} s (records "
                          f"{t.get('downstream_recorded_s', 0):.1f} s, downstream evaluations "
                          f"{t.get('downstream_evaluate_s', 0):.1f} s), setup {t.get('setup_s', 0):.1f} s, "
                          f"ranking {r['ranking']}")
    return rows


def _resnet18(args: argparse.Namespace, python: str | None) -> tuple[list[list[str]], str]:
    import torchvision

    size, batches, batch = (32, 1, 2) if args.quick else (128, 2, 8)
    ours, theirs = [], []
    limit = ""
    for _ in range(args.runs):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        score = OutputAgreement(model, random_inputs((batch, 3, size, size), num_batches=batches, seed=0))
        dummy = torch.randn(1, 3, size, size)
        start = time.perf_counter()
        pruned, res = prune(model, {"flops": "60%"}, dummy, {"score_func": score, "verbose": False})
        seconds = time.perf_counter() - start
        timings = res["timings"]
        ours.append({"search_s": seconds, "score_evals": res["num_score_evals"], "score": score(pruned),
                     "flops_ratio": res["flops_ratio"], "params_ratio": res["params_ratio"],
                     "boundary_evals": res.get("boundary_evals", 0)})
        evals = timings.get("downstream_evaluate_s", timings["sensitivity_s"])
        limit = (f"sensitivity map {timings['sensitivity_s']:.2f} s, of which downstream evaluations {evals:.2f} s "
                 f"and records {timings.get('downstream_recorded_s', 0.0):.2f} s; whole search {seconds:.2f} s = "
                 f"{seconds / max(evals, 1e-9):.2f}x the downstream evaluations (the physical limit of the map); "
                 f"ranking {_ranking(res)}")
        if python is not None and not args.quick:
            theirs.append(_run_modelopt(python, ["resnet18", "--budget", "60%", "--size", str(size), "--batches",
                                                  str(batches), "--batch-size", str(batch), "--threads",
                                                  str(args.threads)]))
    rows = []
    ratio = f"{_median(ours, 'search_s') / _median(theirs, 'search_s'):.2f}" if theirs and "search_s" in theirs[0] else "-"
    for who, runs in (("modeopt", ours), ("ModelOpt 0.47", theirs)):
        if runs and "error" not in runs[0]:
            rows.append([who, _cell(runs, "search_s", ".1f"), _cell(runs, "score_evals", ".0f"),
                         _cell(runs, "boundary_evals", ".0f"), _cell(runs, "score", ".4f"),
                         _cell(runs, "flops_ratio", ".1%"), _cell(runs, "params_ratio", ".1%"),
                         ratio if who == "modeopt" else ""])
        elif runs:
            rows.append([who, f"failed: {runs[0]['error']}", *["-"] * 6])
    return rows, limit


def _import_seconds(python: str, statement: str, runs: int) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    times = []
    for _ in range(runs):
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return statistics.median(times)


#: what a script pays: the faces (their names load on first use), the search stack a prune runs, and
#: the same with the ``fastnas`` mode found through its entry point (as ``apply_mode`` does)
_IMPORT_STATEMENTS = {
    "import modeopt_core, modeopt_fastnas": "import modeopt_core, modeopt_fastnas",
    "from modeopt_fastnas import prune, AccuracyScore": "from modeopt_fastnas import prune, AccuracyScore",
    "... + mo.get_mode('fastnas') (all a prune imports)":
        "from modeopt_fastnas import prune, AccuracyScore; import modeopt_core as mo; mo.get_mode('fastnas')",
}


def _imports(args: argparse.Namespace, python: str | None) -> list[list[str]]:
    runs = 1 if args.quick else args.import_runs
    rows = []
    torch_s = _import_seconds(sys.executable, "import torch", runs)
    for label, statement in _IMPORT_STATEMENTS.items():
        ours = _import_seconds(sys.executable, statement, runs)
        rows.append([label, f"{ours:.2f}", f"{torch_s:.2f}", f"{ours - torch_s:+.2f}"])
    if python is not None and not args.quick:
        theirs = _import_seconds(python, "import modelopt.torch.prune", runs)
        rows.append(["import modelopt.torch.prune (ModelOpt 0.47)", f"{theirs:.2f}", f"{torch_s:.2f}",
                     f"{theirs - torch_s:+.2f}"])
    return rows


def _load(args: argparse.Namespace) -> list[list[str]]:
    import torchvision

    make = torchvision.models.resnet18 if args.quick else torchvision.models.resnet50
    state = {k: v.clone() for k, v in make().state_dict().items()}
    plain, converted = make(), mo.apply_mode(make(), ["fastnas"])
    timings = measure_interleaved({"plain": lambda: plain.load_state_dict(state),
                                   "converted": lambda: converted.load_state_dict(state)}, runs=7)
    ratio = timings["converted"].median / timings["plain"].median
    mib = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    return [[f"{make.__name__} ({mib:.0f} MiB)", f"{1e3 * timings['plain'].median:.1f}",
             f"{1e3 * timings['converted'].median:.1f}", f"{ratio:.2f}"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=1)
    parser.add_argument("--parts", default=",".join(_PARTS), help="comma-separated: " + ", ".join(_PARTS))
    parser.add_argument("--budgets", default="50%,30%", help="digits FLOPs budgets (default 50%%,30%%)")
    parser.add_argument("--epochs", type=int, default=30, help="digits baseline epochs (default 30: 99.33%% validation accuracy)")
    parser.add_argument("--lr", type=float, default=0.05, help="digits baseline learning rate (default 0.05)")
    parser.add_argument("--finetune", action="store_true", help="fine-tune the 75-batch-loader results")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--finetune-shuffles", type=int, default=1,
                        help="fine-tunes per result, each on its own order of the training set (median and range)")
    parser.add_argument("--import-runs", type=int, default=5)
    parser.add_argument("--modelopt-python", default=None, help="python of a venv with nvidia-modelopt 0.47")
    parser.add_argument("--cache", default=None, help="digits baseline cache folder")
    parser.add_argument("--ours", default="defaults",
                        help="comma-separated variants of our digits search: " + ", ".join(_VARIANTS) + " (default: defaults)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.runs, args.epochs, args.budgets = 1, 1, args.budgets.split(",")[0]
    bad = sorted(set(args.ours.split(",")) - set(_VARIANTS))
    if bad:
        parser.error(f"unknown --ours variants {bad}; choose from {', '.join(_VARIANTS)}")
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(_PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(_PARTS)}")
    python = _modelopt_python(args.modelopt_python)
    print("# FastNAS beside ModelOpt 0.47\n")
    print(machine_line(args.threads) + "\n")
    print(f"ModelOpt: {python or 'not found (only our figures below)'}\n")
    if "digits" in parts:
        rows = _digits(args, python)
        print(f"\n## Digits CNN (16x16, 52.6 MFLOPs), median of {args.runs}\n")
        print(markdown_table(["setting", "budget", "library", "search s", "score evals", "FLOPs kept", "params kept",
                              "val acc out", "after fine-tune", "boundary evals", "time ratio"], rows,
                             align="lll" + "r" * 8))
    if "resnet18" in parts:
        rows, limit = _resnet18(args, python)
        print(f"\n## ResNet-18 to 60% FLOPs, data-free output agreement, median of {args.runs}\n")
        print(markdown_table(["library", "search s", "score evals", "boundary evals", "final agreement", "FLOPs kept",
                              "params kept", "time ratio"], rows, align="l" + "r" * 7))
        print(f"\nours: {limit}")
    if "import" in parts:
        print("\n## Import time (fresh interpreter, median)\n")
        print(markdown_table(["statement", "s", "import torch s", "over torch"], _imports(args, python)))
    if "load" in parts:
        print("\n## load_state_dict into a converted model\n")
        print(markdown_table(["model", "plain ms", "converted (fastnas) ms", "ratio"], _load(args)))
    print("\n" + machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("vs_modelopt.py", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
