"""The ``modeopt prune`` and ``modeopt demo`` commands (contributed through ``modeopt_register_commands``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeopt_core import ConfigError, export, save
from modeopt_core.sdk import load_object

from .scores import random_inputs, random_tokens

__all__ = ["DEMO_HELP", "PRUNE_HELP", "configure_demo", "configure_prune", "run_demo", "run_prune"]

_log = logging.getLogger(__name__)

PRUNE_HELP = "prune any model factory's channels to a FLOPs/params/latency budget with FastNAS and save it"
DEMO_HELP = ("train a small CNN on scikit-learn's digits, prune it to 50% FLOPs, fine-tune, compare (~1-3 min); "
             "--distill: prune to 30% and compare fine-tuning with distillation from the unpruned model")


def _limit(text: str) -> str | float:
    """A budget as given on the command line: ``60%`` stays a percentage, ``2.5e6`` becomes a number."""
    text = text.strip()
    if text.endswith("%"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 60% or a number like 2.5e6, got {text!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"expected a comma-separated shape like 1,3,224,224, got {text!r}")
    return shape


def configure_prune(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``modeopt prune``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODULE:FACTORY",
                        help="a function building the model, called without arguments (e.g. torchvision.models:resnet18)")
    source.add_argument("--hf", type=Path, metavar="DIR",
                        help="a local Hugging Face model directory (save_pretrained output with safetensors weights), "
                             "loaded with from_pretrained from that directory only, never from the network")
    parser.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                        help="shape of the dummy input the FLOPs are counted on (e.g. 1,3,224,224); with --hf: "
                             "BATCH,LENGTH of token ids (default 1,64) or the pixel shape of a vision model "
                             "(default from its config)")
    parser.add_argument("--uniform", action=argparse.BooleanOptionalAction, default=None,
                        help="one width per block part across all blocks (same heads and MLP width in every layer): "
                             "what a Hugging Face config can describe (default: on with --hf, off otherwise)")
    parser.add_argument("--hf-out", type=Path, metavar="DIR",
                        help="with --hf and a uniform subnet: where to write the pruned Hugging Face directory "
                             "(default: next to --out, named after it with -hf)")
    parser.add_argument("--flops", type=_limit, help="FLOPs budget: a percentage of the original (60%%) or a count")
    parser.add_argument("--params", type=_limit, help="parameter budget: a percentage (50%%) or a count")
    parser.add_argument("--latency", type=_limit,
                        help="latency budget on this machine: a percentage of the original's measured latency (60%%) "
                             "or milliseconds (12.5), for a batch of --input-shape; the layers are timed once and "
                             "cached (MODEOPT_CACHE_DIR)")
    parser.add_argument("--latency-verify", type=int, default=4, metavar="N",
                        help="with --latency: time the chosen subnet against the original up to N times; while it "
                             "misses the budget as measured, refit the latency model and search again (default 4; "
                             "0 trusts the prediction)")
    parser.add_argument("--stages", type=int, default=1, metavar="N",
                        help="prune in N steps to budgets falling geometrically, with a new sensitivity map of each "
                             "step's result (better at aggressive budgets, about N times the evaluations; "
                             "--flops/--params only; default 1)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch intra-op threads for the search and the latency measurements (default: torch's)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="where to save the pruned, exported model (modeopt safetensors checkpoint)")
    parser.add_argument("--score", metavar="MODULE:FUNCTION",
                        help="score function model -> float, higher is better (default: agreement with the "
                             "unpruned model's outputs on fixed random inputs, no data needed)")
    parser.add_argument("--score-batch-size", type=int, default=8, metavar="N",
                        help="samples per random batch of the default score (default 8)")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="resumable search checkpoint: an interrupted run continues from it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dummy and score inputs (default 0)")


def run_prune(args: argparse.Namespace) -> int:
    """Build the model, prune it, export it, save it, print what changed."""
    from .api import prune
    from .scores import OutputAgreement

    if args.flops is None and args.params is None and args.latency is None:
        raise ConfigError("give a budget: --flops (e.g. 60%), --params and/or --latency (e.g. 60% or 12.5 ms)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.score_batch_size < 1:
        raise ConfigError(f"--score-batch-size must be >= 1, got {args.score_batch_size}")
    hf_dir: Path | None = getattr(args, "hf", None)
    score_fn = load_object(args.score, "--score") if args.score else None  # fail on a bad spec before loading
    if hf_dir is not None:
        from .hf_dir import dummy_input_for, load_hf_dir

        model = load_hf_dir(hf_dir)
        dummy, dummy_text = dummy_input_for(model, args.input_shape, args.seed)
        name = f"{type(model).__name__} from {hf_dir}"
    else:
        if args.input_shape is None:
            raise ConfigError("--model needs --input-shape (the dummy input's shape, e.g. 1,3,224,224)")
        factory = load_object(args.model, "--model")
        model = factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--model {args.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
        torch.manual_seed(args.seed)
        dummy = torch.randn(*args.input_shape)
        name = args.model
    if score_fn is not None:
        score: Callable[[nn.Module], float] = score_fn
        score_name = args.score
    else:
        score = OutputAgreement(model, [_score_batch(model, dummy, args.score_batch_size, args.seed)])
        score_name = "output agreement"
    uniform = args.uniform if args.uniform is not None else hf_dir is not None
    mode_config = {"uniform": True} if uniform else None
    limits = (("flops", args.flops), ("params", args.params), ("latency", args.latency))
    constraints = {k: v for k, v in limits if v is not None}
    config: dict[str, Any] = {"score_func": score, "verbose": not getattr(args, "quiet", False),
                              "latency_verify": args.latency_verify}
    if args.checkpoint is not None:
        config["checkpoint"] = str(args.checkpoint)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        with _no_kv_cache(model):  # the search's forwards need no cache of keys and values
            model, results = prune(model, constraints, dummy, config, mode_config=mode_config, stages=args.stages)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    model = export(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(model, args.out)
    f, p = results["flops"], results["params"]
    out = sys.stdout
    out.write(f"pruned {name} to {constraints} in {elapsed:.1f} s "
              f"({results['num_score_evals']} score evaluations, {score_name})\n")
    out.write(f"  FLOPs   {f['before']:>14,} -> {f['after']:>14,}  ({100 * results['flops_ratio']:.1f}%)\n")
    out.write(f"  params  {p['before']:>14,} -> {p['after']:>14,}  ({100 * results['params_ratio']:.1f}%)\n")
    for stage in results.get("stages", []):
        out.write(f"  stage {stage['stage']}: FLOPs {100 * stage['flops_ratio']:.1f}%, params "
                  f"{100 * stage['params_ratio']:.1f}%, {stage['num_score_evals']} evaluations, "
                  f"{stage['seconds']:.1f} s\n")
    if "latency" in results:
        out.write(_latency_line(results["latency"]))
    out.write(f"  score   {results['original_score']:>14.4g} -> predicted >= {results['predicted_score']:.4g} "
              "(worst single-layer drop; layers interact, so measure the real score)\n")
    if hf_dir is None:
        out.write(f"saved {args.out} ({args.out.stat().st_size:,} bytes); load it with "
                  f"modeopt_core.restore(<fresh {args.model.split(':')[-1]}()>, {str(args.out)!r})\n")
    else:
        out.write(f"saved {args.out} ({args.out.stat().st_size:,} bytes); load it with modeopt_core.restore("
                  f"{type(model).__name__}.from_pretrained({str(hf_dir)!r}), {str(args.out)!r})\n")
        _write_hf(model, hf_dir, args, dummy_text, out)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and not results["bn_recalibrated"]:
        out.write("note: BatchNorm statistics were not re-estimated (no data); fine-tune or recalibrate before use\n")
    return 0


def _score_batch(model: nn.Module, dummy: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """A fixed batch like ``dummy`` with ``batch_size`` samples: standard-normal values, or uniformly random
    token ids of the model's vocabulary for a token-id dummy input."""
    shape = (batch_size, *dummy.shape[1:])
    if dummy.dtype in (torch.int32, torch.int64):
        config: Any = getattr(model, "config", None)
        return random_tokens(int(config.vocab_size), shape, num_batches=1, seed=seed + 1)[0]
    return random_inputs(shape, num_batches=1, seed=seed)[0]


class _no_kv_cache:
    """Turn off a Hugging Face config's ``use_cache`` for a block (restored afterwards)."""

    def __init__(self, model: nn.Module) -> None:
        self.config = getattr(model, "config", None)
        self.saved = getattr(self.config, "use_cache", None)

    def __enter__(self) -> None:
        if isinstance(self.saved, bool):
            self.config.use_cache = False  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.saved, bool):
            self.config.use_cache = self.saved  # type: ignore[union-attr]


def _write_hf(model: nn.Module, hf_dir: Path, args: argparse.Namespace, dummy_text: str, out: Any) -> None:
    """Write the pruned Hugging Face directory when its config can describe the model (a uniform subnet)."""
    from modeopt_autonas.space import describe_exported

    from .hf_dir import write_hf_dir

    if not describe_exported(model):
        out.write("note: the subnet differs between layers, which a Hugging Face config cannot describe: no "
                  "Hugging Face directory was written (prune with --uniform for one); the checkpoint above has it\n")
        return
    target = args.hf_out or args.out.with_name(args.out.stem + "-hf")
    copied = write_hf_dir(model, hf_dir, target)
    extra = f" and {len(copied)} tokenizer file(s)" if copied else ""
    out.write(f"wrote {target} (save_pretrained{extra}; dummy input {dummy_text}); load it with "
              f"{type(model).__name__}.from_pretrained({str(target)!r})\n")


def _latency_line(lat: dict[str, Any]) -> str:
    line = f"  latency {lat['before']:>11.3f} ms -> {lat['after']:>11.3f} ms  ({100 * lat['after'] / lat['before']:.1f}%, predicted)"
    if "measured_after" in lat:
        line += (f"; measured on the export {lat['measured_before']:.3f} -> {lat['measured_after']:.3f} ms "
                 f"({100 * lat['measured_ratio']:.1f}%), prediction error {100 * lat['error']:+.1f}%")
    check = lat.get("verification")
    if check:
        verdict = "met" if check["met"] else "NOT met"
        line += (f"\n  latency budget {verdict} as measured after {len(check['rounds'])} check(s) "
                 f"({check['refits']} refit(s) of the latency model)")
    return line + "\n"


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``modeopt demo``."""
    parser.add_argument("--flops", type=_limit, default=None,
                        help="FLOPs budget (default 50%%, 30%% with --distill, unless --params is given)")
    parser.add_argument("--params", type=_limit, default=None, help="parameter budget, e.g. 40%%")
    parser.add_argument("--out", type=Path, default=Path("modeopt-demo"),
                        help="output folder: cached baseline, checkpoints, plots, summary.json (default ./modeopt-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of model init and training (default 0)")
    parser.add_argument("--distill", action="store_true",
                        help="also fine-tune the pruned model with the kd_loss mode, distilled from the unpruned one, "
                             "and compare (needs the modeopt-distill plugin)")
    parser.add_argument("--finetune-epochs", type=int, default=None, metavar="N",
                        help="epochs of each fine-tune (default 3, 5 with --distill)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the 8x8 digits convolutions gain little from more, and an "
                             "oversubscribed CPU loses a lot)")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo and print the before/after table."""
    from .demo import format_table, require_distill
    from .demo import run_demo as _run

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    distill = bool(getattr(args, "distill", False))
    if distill:
        require_distill()
    default_flops = "30%" if distill else "50%"
    flops = args.flops if args.flops is not None or args.params is not None else default_flops
    epochs = getattr(args, "finetune_epochs", None)
    epochs = (5 if distill else 3) if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"--finetune-epochs must be >= 1, got {epochs}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = _run(args.out, flops=flops, params=args.params, seed=args.seed, finetune_epochs=epochs,
                      distill=distill, verbose=not getattr(args, "quiet", False))
    finally:
        torch.set_num_threads(threads)
    sys.stdout.write(format_table(result) + "\n")
    return 0
