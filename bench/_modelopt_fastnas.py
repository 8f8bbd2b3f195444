"""NVIDIA ModelOpt's FastNAS on the same workloads, run by ``bench/vs_modelopt.py`` in a separate venv.

Never imported by modeopt, its tests or the other benchmarks: ``vs_modelopt.py`` runs it as a
subprocess with the interpreter of a throwaway venv that has ``nvidia-modelopt==0.47.*`` and
``torchprofile==0.0.4`` (see ``docs/benchmarks.md``). Prints one JSON line with the figures.

    <modelopt-venv>/bin/python bench/_modelopt_fastnas.py digits --baseline B.safetensors --budget 50%
        --calib-batch-size 16
    <modelopt-venv>/bin/python bench/_modelopt_fastnas.py resnet18 --budget 60%
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch


def _rules(divisor: int) -> dict[str, Any]:
    ratios = tuple(round(0.05 * i, 2) for i in range(1, 21))
    conv = {"*": {"channels_ratio": ratios, "kernel_size": (), "channel_divisor": divisor}}
    feat = {"*": {"features_ratio": ratios, "feature_divisor": divisor}}
    return {"nn.Conv2d": conv, "nn.BatchNorm2d": feat, "nn.Linear": feat}


def _counts(model: torch.nn.Module, dummy: torch.Tensor) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(dummy)
    return float(counter.get_total_flops()), float(sum(p.numel() for p in model.parameters()))


def _widths(model: torch.nn.Module) -> dict[str, int]:
    """Output width of every conv/linear of ``model`` (to compare where each tool prunes)."""
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    return {n: getattr(m, "out_channels", getattr(m, "out_features", 0))
            for n, m in model.named_modules() if isinstance(m, layers)}


def _digits(args: argparse.Namespace) -> dict[str, Any]:
    import modelopt.torch.prune as mtp
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader, TensorDataset

    from modeopt_core import make_forward_loop, recalibrate_batchnorm
    from modeopt_fastnas.digits import DigitsResNet, accuracy, digits_loaders

    train, val = digits_loaders(seed=0, image_size=args.image_size)
    x, y = train.dataset.tensors  # type: ignore[attr-defined]
    calib = DataLoader(TensorDataset(x, y), batch_size=args.calib_batch_size)  # fixed order, as ours
    model = DigitsResNet()
    model.load_state_dict(load_file(args.baseline))
    dummy = torch.zeros(1, 1, args.image_size, args.image_size)
    base_flops, base_params = _counts(model, dummy)
    evals = [0]

    def score(m: torch.nn.Module) -> float:
        evals[0] += 1
        return accuracy(m, val)

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = mtp.prune(model, mode=[("fastnas", _rules(args.divisor))], constraints={"flops": args.budget},
                             dummy_input=dummy, config={"data_loader": calib, "score_func": score,
                                                        "max_iter_data_loader": 50, "verbose": False})
    seconds = time.perf_counter() - start
    skipped = sum("queue not filled" in str(w.message) for w in caught)
    flops, params = _counts(model, dummy)
    straight = accuracy(model, val)
    out = {"search_s": seconds, "score_evals": evals[0], "flops_ratio": flops / base_flops,
           "params_ratio": params / base_params, "accuracy_out": straight, "bn_skipped_warnings": skipped,
           "calib_batches": len(calib), "widths": _widths(model)}
    recalibrate_batchnorm(model, make_forward_loop(calib, max_batches=50), min_batches=1)
    out["accuracy_bn"] = accuracy(model, val)
    if args.finetune_epochs:
        from _common import finetune_accuracies

        out["finetuned"] = finetune_accuracies(model, train.dataset, val, args.finetune_epochs, args.finetune_shuffles)
    return out


def _resnet18(args: argparse.Namespace) -> dict[str, Any]:
    import modelopt.torch.prune as mtp
    import torchvision

    from modeopt_fastnas import OutputAgreement, random_inputs

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None).eval()
    inputs = random_inputs((args.batch_size, 3, args.size, args.size), num_batches=args.batches, seed=args.seed)
    agreement = OutputAgreement(model, inputs)
    evals = [0]

    def score(m: torch.nn.Module) -> float:
        evals[0] += 1
        return agreement(m)

    dummy = torch.randn(1, 3, args.size, args.size)
    base_flops, base_params = _counts(model, dummy)
    start = time.perf_counter()
    model, _ = mtp.prune(model, mode="fastnas", constraints={"flops": args.budget}, dummy_input=dummy,
                         config={"score_func": score, "verbose": False})
    seconds = time.perf_counter() - start
    flops, params = _counts(model, dummy)
    return {"search_s": seconds, "score_evals": evals[0], "flops_ratio": flops / base_flops,
            "params_ratio": params / base_params, "score": agreement(model)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("digits", "resnet18"))
    parser.add_argument("--budget", default="50%")
    parser.add_argument("--baseline", help="digits: plain state dict (safetensors) of the trained DigitsResNet")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--calib-batch-size", type=int, default=16)
    parser.add_argument("--finetune-epochs", type=int, default=0, help="digits: fine-tune the result (SGD, lr 0.01)")
    parser.add_argument("--finetune-shuffles", type=int, default=1, help="digits: fine-tunes, each on its own order")
    parser.add_argument("--divisor", type=int, default=8, help="digits: channel divisor of the rules (default 8)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = _digits(args) if args.workload == "digits" else _resnet18(args)
    import modelopt

    result["modelopt_version"] = modelopt.__version__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
