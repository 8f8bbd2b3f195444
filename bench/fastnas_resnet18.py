"""FastNAS on torchvision ResNet-18 (random weights) to a FLOPs budget, data-free.

The score is the agreement of the pruned model's logits with the unpruned model's on fixed random
batches (``modeopt_fastnas.OutputAgreement``). Prints the sensitivity-map time, the binary-search
time, the number of score evaluations, FLOPs/params before and after, and the command that
reproduces the run.

    .venv/bin/python bench/fastnas_resnet18.py [--flops 60%] [--size 128] [--batches 2] [--batch-size 8]
                                               [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch
import torchvision

import modeopt_core as mo
from modeopt_fastnas import OutputAgreement, prune, random_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops", default="60%", help="FLOPs budget (default 60%%)")
    parser.add_argument("--size", type=int, default=128, help="input height/width (default 128)")
    parser.add_argument("--batches", type=int, default=2, help="fixed random batches scored (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per scored batch (default 8)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = torchvision.models.resnet18(weights=None)
    model.eval()
    inputs = random_inputs((args.batch_size, 3, args.size, args.size), num_batches=args.batches, seed=args.seed)
    score = OutputAgreement(model, inputs)
    dummy = torch.randn(1, 3, args.size, args.size)

    start = time.perf_counter()
    model = mo.apply_mode(model, ["fastnas"])
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    model, res = prune(model, {"flops": args.flops}, dummy, {"score_func": score, "verbose": not args.quiet})
    total_s = time.perf_counter() - start
    pruned_score = score(model)
    timings = res["timings"]

    cmd = shlex.join([".venv/bin/python", "bench/fastnas_resnet18.py",
                      *(argv if argv is not None else sys.argv[1:])])
    print(f"FastNAS resnet18 -> {args.flops} FLOPs  (torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, input 1x3x{args.size}x{args.size}, "
          f"score on {args.batches}x{args.batch_size} random samples)")
    rows = [
        ("convert (analysis + space)", f"{convert_s:.2f} s"),
        ("sort + original score", f"{timings.get('setup_s', 0.0):.2f} s"),
        ("sensitivity map", f"{timings['sensitivity_s']:.2f} s"),
        ("binary search", f"{1e3 * timings['binary_search_s']:.1f} ms ({res['iterations']} steps)"),
        ("search total", f"{total_s:.2f} s"),
        ("score evaluations", f"{res['num_score_evals']} ({len(res['pruned_hparams'])} hparams)"),
        ("FLOPs", f"{res['flops']['before']:,} -> {res['flops']['after']:,} ({100 * res['flops_ratio']:.1f}%)"),
        ("params", f"{res['params']['before']:,} -> {res['params']['after']:,} ({100 * res['params_ratio']:.1f}%)"),
        ("output agreement", f"1.0 -> {pruned_score:.4f} (worst single-layer estimate {res['predicted_score']:.4f})"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print(f"reproduce: {cmd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
