"""Transformers: FastNAS on a tiny Llama, and convert time / forward overhead of a GPT-2-sized model.

Part ``llama``: a Llama (4 layers, hidden 256, 8 heads, 2 key/value heads, MLP 704, vocabulary 512),
first trained for ``--train-steps`` steps on a synthetic next-token task (each sequence follows
``t -> (a * t + 7) mod 512`` for its own ``a`` of 1, 3, 5, 7, so the loss has something to lose), is pruned with
FastNAS to 50 % params (a uniform subnet, as a Hugging Face config can describe) with
:class:`~modeopt_fastnas.LanguageModelScore` on fixed held-out batches. Printed: search time, score
evaluations, next-token loss before / after (straight out, no fine-tuning), params and FLOPs kept, and
the exported model's forward latency over the original's (interleaved medians).

Part ``gpt2``: a randomly initialised ``GPT2LMHeadModel`` with the default config (124M parameters):
the time of ``apply_mode(model, ["fastnas"])`` (analysis + conversion; median of ``--convert-runs``,
model construction not timed) and the forward latency of the converted model at its max subnet over
the original's on 1 x ``--seq`` tokens.

    .venv/bin/python bench/transformers_prune.py [--parts llama,gpt2] [--threads 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any

import torch
from _common import add_common_args, cpu_probe_ms, machine_line, markdown_table, measure_interleaved, reproduce_line
from _common import set_threads as _set_threads
from torch import nn

import modeopt_core as mo
from modeopt_fastnas import LanguageModelScore, prune

VOCAB = 512


def _synthetic(batches: int, batch: int, length: int, seed: int) -> list[torch.Tensor]:
    """Sequences ``t_{i+1} = (a t_i + 7) mod VOCAB`` with a per-sequence ``a`` of {1, 3, 5, 7}: the next
    token needs the previous one and ``a``, which only the context (attention) tells."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        a = 2 * torch.randint(0, 4, (batch, 1), generator=gen) + 1
        b = torch.full((batch, 1), 7)
        t = torch.randint(0, VOCAB, (batch, 1), generator=gen)
        seq = [t]
        for _ in range(length - 1):
            t = (a * t + b) % VOCAB
            seq.append(t)
        out.append(torch.cat(seq, 1))
    return out


def _llama(steps: int, seed: int) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=128, use_cache=False, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for i, ids in enumerate(_synthetic(steps, 16, 32, seed + 1)):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 50 == 0:
            print(f"  train step {i}: loss {loss.item():.3f}", file=sys.stderr)
    return model.eval()


def _forward(model: nn.Module, ids: torch.Tensor) -> Any:
    def run() -> None:
        with torch.inference_mode():
            model(input_ids=ids)

    return run


def llama_part(args: argparse.Namespace) -> list[list[Any]]:
    model = _llama(args.train_steps, args.seed)
    score = LanguageModelScore(_synthetic(4, 8, 32, seed=10_000))
    original = copy.deepcopy(model)
    dummy = _synthetic(1, 1, 32, seed=20_000)[0]
    loss_before = -score(model)
    t0 = time.perf_counter()
    model, results = prune(model, {"params": "50%"}, dummy, {"score_func": score, "verbose": False},
                           mode_config={"uniform": True})
    search_s = time.perf_counter() - t0
    exported = mo.export(model)
    loss_after = -score(exported)
    ids = _synthetic(1, 1, args.seq, seed=30_000)[0]
    timing = measure_interleaved({"original": _forward(original, ids), "pruned": _forward(exported, ids)},
                                 runs=args.runs, warmup=2)
    ratio = timing["pruned"].median / timing["original"].median
    config = exported.config
    print(f"llama pruned: hidden {config.hidden_size}, heads {config.num_attention_heads}/"
          f"{config.num_key_value_heads}, MLP {config.intermediate_size}, layers {config.num_hidden_layers}; "
          f"channels ranked by {results['importance']} (probe scores {results['importance_probe']})")
    return [[
        "tiny Llama 4x256, 8/2 heads", "params 50%", f"{search_s:.1f}", results["num_score_evals"],
        f"{loss_before:.3f}", f"{loss_after:.3f}", f"{100 * results['params_ratio']:.1f}%",
        f"{100 * results['flops_ratio']:.1f}%", f"{ratio:.2f}",
    ]]


def _gpt2_config(quick: bool) -> Any:
    import transformers

    return transformers.GPT2Config(use_cache=False, **({"n_layer": 2, "n_embd": 128, "n_head": 4} if quick else {}))


def gpt2_part(args: argparse.Namespace) -> list[list[Any]]:
    import transformers

    ids = torch.randint(0, 50257, (1, args.seq), generator=torch.Generator().manual_seed(0))
    times = []
    model = None
    for i in range(args.convert_runs):
        torch.manual_seed(i)
        fresh = transformers.GPT2LMHeadModel(_gpt2_config(args.quick)).eval()
        t0 = time.perf_counter()
        converted = mo.apply_mode(fresh, ["fastnas"])
        times.append(time.perf_counter() - t0)
        model = converted
        print(f"  convert run {i}: {times[-1]:.2f} s", file=sys.stderr)
    assert model is not None
    torch.manual_seed(0)
    plain = transformers.GPT2LMHeadModel(_gpt2_config(args.quick)).eval()
    timing = measure_interleaved({"original": _forward(plain, ids), "converted": _forward(model, ids)},
                                 runs=args.runs, warmup=2)
    params = sum(p.numel() for p in plain.parameters())
    return [[
        f"GPT-2 ({params / 1e6:.0f}M params)", f"{statistics.median(times):.2f}",
        f"{min(times):.2f}-{max(times):.2f}", f"{timing['original'].median * 1e3:.1f}",
        f"{timing['converted'].median * 1e3:.1f}",
        f"{timing['converted'].median / timing['original'].median:.3f}",
    ]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=10)
    parser.add_argument("--parts", default="llama,gpt2", help="comma-separated: llama, gpt2")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the tiny Llama")
    parser.add_argument("--convert-runs", type=int, default=3, help="conversions of GPT-2 timed")
    parser.add_argument("--seq", type=int, default=128, help="tokens per forward of the latency figures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:  # the smoke test: a few training steps, one conversion of a 2-layer GPT-2
        args.train_steps, args.convert_runs, args.runs, args.seq = 5, 1, 2, 16
    _set_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"llama", "gpt2"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    print(machine_line(args.threads))
    print(f"CPU probe at start: {cpu_probe_ms():.1f} ms")
    print(reproduce_line("transformers_prune.py", argv))
    if "llama" in parts:
        print()
        print(markdown_table(
            ["model", "budget", "search s", "score evals", "loss before", "loss after", "params kept",
             "FLOPs kept", "exported latency ratio"],
            llama_part(args)))
    if "gpt2" in parts:
        print()
        print(markdown_table(
            ["model", "convert s (median)", "convert s (range)", "original ms", "max subnet ms", "forward ratio"],
            gpt2_part(args)))
    print(f"\nCPU probe at end: {cpu_probe_ms():.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
