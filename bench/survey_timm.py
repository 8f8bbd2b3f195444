"""Survey: how the ``fastnas`` search space copes with the timm zoo (``tests/autonas/zoo/timm_cases.py``).

Per model (random weights, enlivened like the torchvision zoo, eval mode, one thread): does
``apply_mode(model, ["fastnas"])`` convert, how many configurable hparams, convert time, the
``ConvertError`` text when it fails; for converted models whether the min and a random subnet run,
whether the export equals the dynamic model (``max|a-b| <= 1e-4 * max(1, max|a|)``) and whether the
analytic FLOPs (``modeopt_autonas.profile_subnet``) match ``torch.utils.flop_counter`` on the export
within 1% (params exactly). The analysis report's frozen reasons are mapped to *causes* (a timm layer
or op the analysis does not follow), together with a census of layers that subclass a supported
layer but override ``forward`` and every op the analysis treats as a boundary.

Each model runs in a worker subprocess with a wall-clock limit (a model that hangs or exhausts memory
costs only itself). Results go to a JSON file; ``--report`` renders the markdown tables from it:

    .venv/bin/python bench/survey_timm.py --out survey_timm.json [--models resnet18 ...] [--timeout 300]
    .venv/bin/python bench/survey_timm.py --report survey_timm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import select
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for tests.autonas

#: reasons every model has (the image input and the logits): never a cause
_TRIVIAL = re.compile(r"^(fed by model input|model output)$")
#: the "<role> channels (group N): " prefix of frozen items that repeat a group's first reason
_ITEM_PREFIX = re.compile(r"^\w+ channels \(group \d+\): ")
#: reasons that name the origin of an opaque value: "fed by output of X", "combined with output of X by op"
_SECONDARY = re.compile(
    r"^(fed by|combined with|concatenated with) (output of )?(?P<origin>.+?)( by (?P<op>[\w.]+)[^()]*)?$"
)

#: (pattern over a reason or an op, cause label); first match wins
_CAUSES: list[tuple[str, str]] = [
    (
        r"untraceable module|untraceable parent|its parent is untraceable",
        "untraceable module (fx TraceError: control flow / iteration on proxies)",
    ),
    (
        r"the channel dim is not the input dim",
        "channel dim is not the layer's input dim (token-mixing MLP on transposed tokens)",
    ),
    (
        r"opaque module .*\((Unfold|Fold)\)|functional\.(unfold|fold)|Tensor\.unfold",
        "unfold/fold (outlook attention, halo blocks)",
    ),
    (r"analysis error", "analysis error (an op made the propagation raise)"),
    (r"grouped conv with in_channels != out_channels", "grouped conv with in != out (frozen by spec)"),
    (
        r"combined with parameter|combined with \S+ \[.*channel position unknown",
        "per-channel parameter on the stream (layer scale, pos-embed, affine)",
    ),
    (r"functional\.batch_norm", "F.batch_norm in a BatchNorm subclass with its own forward (BatchNormAct2d, ...)"),
    (
        r"functional\.(layer_norm|group_norm|rms_norm)|fast_layer_norm|rms_norm",
        "F.layer_norm/group_norm/rms_norm in a norm subclass (timm LayerNorm, LayerNorm2d, GroupNormAct, ...)",
    ),
    (
        r"functional\.conv\dd|torch\.conv\dd|conv2d_same|conv_transpose",
        "F.conv2d in a conv subclass (StdConv2d, ScaledStdConv2d, Conv2dSame, ...)",
    ),
    (r"functional\.linear", "F.linear (a Linear subclass or functional use)"),
    (r"is used directly \(functionally\)", "weights of a registered layer used functionally"),
    (
        r"split along the channel dim|splits the channel dim|\b(chunk|split|tensor_split|unbind)\b",
        "channel split (chunk/split/unbind)",
    ),
    (r"indexed|operator\.getitem", "channel slicing / indexing (x[:, a:b], x[:, 0])"),
    (r"scaled_dot_product_attention|softmax|matmul|bmm|einsum|baddbmm", "attention math (matmul/softmax/sdpa)"),
    (
        r"reshaped by|flattened together|Tensor\.(view|reshape)\b|torch\.reshape|unflatten",
        "reshape of the channel dim (heads, windows, shuffle, tokens)",
    ),
    (
        r"permute|transpose|swapaxes|moves the channel dim|cannot follow the channel dim",
        "permute/transpose the analysis cannot follow",
    ),
    (r"MultiheadAttention", "nn.MultiheadAttention (opaque leaf)"),
    (r"LSTM|GRU|\bRNN", "recurrent layer (opaque leaf)"),
    (r"unknown channel width|user leaf", "opaque leaf module"),
    (r"\broll\b|pads the channel dim|\bpad\b", "roll/pad (shifted windows, same padding)"),
    (
        r"different channel structure|width mismatch|misaligned|cannot tell",
        "structure mixing (mismatched widths/dims, unknown rank)",
    ),
    (r"broadcast", "width-1 broadcast"),
    (r"fixes the channel width|removes the channel dim", "op fixes/removes the channel dim"),
    (r"passed as an extra argument", "channels passed as an extra argument of an op/module"),
    (r"new_empty|bernoulli", "stochastic depth traced in train mode (timm DropPath: x.new_empty(...).bernoulli_)"),
    (r"addcmul", "per-channel parameter on the stream (layer scale, pos-embed, affine)"),
    (r"Tensor\.norm\b", "Tensor.norm over spatial dims (ConvNeXt-V2 GRN)"),
]


def _label(text: str) -> str | None:
    for pattern, label in _CAUSES:
        if re.search(pattern, text):
            return label
    return None


def cause_of(reason: str) -> str | None:
    """The cause label of a frozen reason; None for the model input/output; ``secondary: ...`` when the
    reason only says that a value of unknown layout (made upstream) reached this place."""
    reason = _ITEM_PREFIX.sub("", reason)
    if _TRIVIAL.match(reason):
        return None
    m = _SECONDARY.match(reason)
    if m and not reason.startswith("combined with parameter"):
        origin = m.group("origin")
        if reason.startswith("concatenated with") and origin.startswith("Tensor.expand"):
            return "class/register token concatenated along the tokens (cls_token.expand + cat)"
        label = None if origin.startswith("torch.cat") else _label(origin)
        if (
            label is None
            and re.match(r"Tensor\.(reshape|view) ", origin)
            and m.group("op") in ("Tensor.mul", "operator.mul")
        ):
            # ``x * self.gamma.reshape(1, -1, 1, 1)``: a reshaped per-channel parameter (ConvNeXt's layer scale)
            label = "per-channel parameter on the stream (layer scale, pos-embed, affine)"
        return label or "secondary: " + re.sub(r" in [\w.\[\]]+", "", origin)[:80]
    label = _label(reason)
    if label:
        return label
    m = re.match(r"flows into (?P<op>[\w.]+)", reason)
    if m:
        return f"unsupported op: {m.group('op')}"
    return "other: " + re.sub(r" (in|of) [\w.\[\]]+", "", reason)[:90]


def is_cause(label: str | None) -> bool:
    return label is not None and not label.startswith("secondary: ")


# ------------------------------------------------------------------------------------------------
# worker side: one model at a time


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)


def _rel_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def _census(model: Any) -> dict[str, int]:
    """Modules that subclass a registered layer but override forward (the registry skips them)."""
    from modeopt_autonas.space.layers import LAYERS

    registered = tuple(LAYERS.registered())
    found: Counter[str] = Counter()
    for m in model.modules():
        if isinstance(m, registered) and LAYERS.lookup_class(type(m)) is None:
            base = next(b for b in type(m).__mro__ if b in registered)
            found[f"{type(m).__module__}.{type(m).__qualname__}({base.__name__})"] += 1
    return dict(found)


def _watch_boundaries() -> tuple[list[tuple[str, bool]], Any]:
    """Record every op/module the propagation treats as a boundary (observation only)."""
    from modeopt_autonas.space.analysis import propagate as prop
    from modeopt_autonas.space.analysis.ops import op_name
    from modeopt_autonas.space.analysis.values import Chan, walk

    seen: list[tuple[str, bool]] = []
    orig_boundary, orig_opaque = prop._GraphPass.boundary, prop._GraphPass._opaque_module

    def boundary(self: Any, node: Any) -> Any:
        vals = [self.val(a) for a in node.args] + [self.val(v) for v in node.kwargs.values()]
        chan = any(isinstance(c, Chan) for v in vals for c in walk(v))
        seen.append((op_name(node), chan))
        return orig_boundary(self, node)

    def opaque(self: Any, node: Any, name: str, what: str) -> Any:
        module = self.traced.root.get_submodule(str(node.target)) if node.target else self.traced.root
        x = self.val(node.args[0]) if node.args else None
        seen.append((f"module {type(module).__name__}", isinstance(x, Chan)))
        return orig_opaque(self, node, name, what)

    prop._GraphPass.boundary = boundary  # type: ignore[method-assign]
    prop._GraphPass._opaque_module = opaque  # type: ignore[method-assign]

    def restore() -> None:
        prop._GraphPass.boundary = orig_boundary  # type: ignore[method-assign]
        prop._GraphPass._opaque_module = orig_opaque  # type: ignore[method-assign]

    return seen, restore


def _trace_origins(model: Any, failed: dict[str, str]) -> dict[str, str]:
    """Re-trace each module the tracer gave up on, for the source line of its error (observation only)."""
    from modeopt_autonas.space.analysis.ops import is_known_leaf
    from modeopt_autonas.space.analysis.tracer import _ChannelTracer, _concrete_args
    from modeopt_autonas.space.layers import LAYERS

    def leaf(m: Any, name: str) -> bool:
        return LAYERS.lookup_class(type(m)) is not None or is_known_leaf(m)

    out = {}
    for name in failed:
        module = model.get_submodule(name) if name else model
        others = {k: v for k, v in failed.items() if k != name and (not name or k.startswith(name + "."))}
        tracer = _ChannelTracer(leaf, others, name)
        try:
            tracer.trace(module, concrete_args=_concrete_args(module) or None)
            out[name or "(model)"] = "traces alone"
        except Exception as exc:
            error = tracer.failure[1] if tracer.failure else exc
            frames = [f for f in traceback.extract_tb(error.__traceback__) if "/timm/" in f.filename]
            where = (
                f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}: {(frames[-1].line or '').strip()}"
                if frames
                else "torch.fx"
            )
            out[name or "(model)"] = f"{type(error).__name__} @ {where}"
    return out


def _flop_counter_no_grad(model: Any, x: Any) -> str:
    """Whether ``FlopCounterMode`` works on the model itself under ``no_grad`` (it does not for some)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False):
            model(x)
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def _reasons(report: Any) -> list[str]:
    out = [r for g in report.frozen_groups for r in g.reasons]
    out += [f.reason for f in report.frozen if not _ITEM_PREFIX.match(f.reason)]
    return out


def survey_one(name: str, size: int, img_size: int | None, seed: int = 0) -> dict[str, Any]:
    """Everything measured for one timm model (exceptions are caught into the record)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import modeopt_autonas as mtn
    import modeopt_core as mo
    from tests.autonas._zoo_cases import enliven

    rec: dict[str, Any] = {"model": name, "input": size, "img_size": img_size}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    kwargs = {"img_size": img_size} if img_size else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    enliven(model, torch.randn(4, 3, size, size, generator=gen), seed)
    model.eval()
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec["create_s"] = round(time.perf_counter() - t0, 3)
    with torch.no_grad():
        reference = model(x)
    rec["census"] = _census(model)

    # the analysis exactly as the mode runs it (train flags), with its boundaries recorded
    flags = [(m, m.training) for m in model.modules()]
    seen, restore = _watch_boundaries()
    try:
        model.train(True)
        t = time.perf_counter()
        result = mtn.analyze(model)
        rec["analyze_s"] = round(time.perf_counter() - t, 3)
    finally:
        restore()
        for m, flag in flags:
            m.training = flag
    report = result.report
    rec["searchable_groups"] = len(report.searchable_groups)
    rec["frozen_groups"] = len(report.frozen_groups)
    rec["depth_seqs"] = len(report.depth)
    rec["untraceable"] = dict(report.untraceable)
    rec["untraceable_at"] = _trace_origins(model, report.untraceable) if report.untraceable else {}
    rec["flop_counter_no_grad"] = _flop_counter_no_grad(model, x)
    reasons = [r for r in _reasons(report) if cause_of(r) is not None]
    rec["reasons"] = list(Counter(reasons).items())[:60]  # first-seen order
    rec["causes"] = dict(Counter(str(cause_of(r)) for r in reasons))
    rec["reason_set"] = sorted(set(reasons))[:600]  # every distinct reason, for re-rendering with new labels
    boundaries: Counter[str] = Counter()
    for op, chan in seen:
        boundaries[f"{op} [{'channels' if chan else 'opaque'}]"] += 1
    rec["boundaries"] = dict(boundaries)

    t = time.perf_counter()
    try:
        model = mo.apply_mode(model, ["fastnas"])
    except mo.ConvertError as exc:
        rec["convert_s"] = round(time.perf_counter() - t, 3)
        rec["converts"] = False
        rec["error"] = str(exc)
        return rec
    rec["convert_s"] = round(time.perf_counter() - t, 3)
    rec["converts"] = True
    space = mtn.get_search_space(model)
    names = [n for n, _ in space.named_hparams(True)]
    rec["hparams"] = len(names)
    rec["depth_hparams"] = sum(1 for n in names if n.endswith("depth"))
    rec["space_frozen"] = dict(Counter(str(cause_of(v)) for v in space.frozen.values() if cause_of(v) is not None))
    checks: dict[str, str] = {}
    with torch.no_grad():
        d = _rel_diff(model(x), reference)
    checks["max_equals_original"] = "ok" if d <= 1e-4 else f"rel diff {d:.2e}"
    rng = random.Random(seed)
    for mode in ("min", "random"):
        try:
            mtn.sample(model, mode, seed=rng)
            with torch.no_grad():
                y = model(x)
            if not bool(torch.isfinite(y).all()):
                checks[mode] = "non-finite output"
                continue
            analytic = mtn.profile_subnet(model, x)
            exported = mo.export(copy.deepcopy(model)).eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                y_exp = exported(x)
            flops = counter.get_total_flops()
            params = sum(p.numel() for p in exported.parameters())
            problems = []
            d = _rel_diff(y_exp, y)
            if d > 1e-4:
                problems.append(f"export differs (rel {d:.2e})")
            if abs(analytic["flops"] - flops) > 0.01 * max(flops, 1):
                problems.append(
                    f"FLOPs {analytic['flops']} vs counted {flops} ({analytic['flops'] / max(flops, 1):.3f}x)"
                )
            if analytic["params"] != params:
                problems.append(f"params {analytic['params']} vs {params}")
            checks[mode] = "; ".join(problems) or "ok"
            if mode == "min":
                rec["min_flops_ratio"] = round(flops / max(1, _full_flops(space, x)), 3)
        except Exception as exc:
            checks[mode] = f"{type(exc).__name__}: {str(exc)[:200]}"
    rec["checks"] = checks
    rec["total_s"] = round(time.perf_counter() - t0, 2)
    return rec


def _full_flops(space: Any, x: Any) -> int:
    profiler_cls = __import__("modeopt_autonas").SubnetProfiler
    profiler = profiler_cls(space, x)
    return int(profiler.flops({n: hp.max for n, hp in space.named_hparams(True)}))


def worker() -> None:
    """Read ``name size img_size`` lines from stdin, answer one JSON line per model."""
    import torch

    _quiet()
    torch.set_num_threads(1)
    for line in sys.stdin:
        name, size, img = line.split()
        print(json.dumps({"start": name}), flush=True)
        try:
            rec = survey_one(name, int(size), int(img) or None)
        except Exception as exc:
            rec = {
                "model": name,
                "crash": f"{type(exc).__name__}: {str(exc)[:300]}",
                "tb": traceback.format_exc()[-1500:],
            }
        print(json.dumps(rec, default=str), flush=True)


# ------------------------------------------------------------------------------------------------
# parent side: schedule workers, enforce the per-model limit


def _spawn() -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, __file__, "--worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            return proc.stdout.readline()


def run_all(cases: list[Any], timeout: float) -> Iterator[dict[str, Any]]:
    """Survey ``cases`` in a worker process, restarting it after a model times out or crashes it."""
    proc: subprocess.Popen[str] | None = None
    for case in cases:
        if proc is None or proc.poll() is not None:
            proc = _spawn()
        assert proc.stdin is not None
        proc.stdin.write(f"{case.name} {case.input_size} {case.img_size or 0}\n")
        proc.stdin.flush()
        start = time.monotonic()
        line = _read_line(proc, start + 120)  # the start marker (imports on a fresh worker)
        line = _read_line(proc, start + timeout) if line else None
        if not line:
            proc.kill()
            proc.wait()
            proc = None
            yield {"model": case.name, "input": case.input_size, "timeout": f"no result within {timeout:.0f} s"}
            continue
        rec = json.loads(line)
        rec["family"] = case.family
        rec["wall_s"] = round(time.monotonic() - start, 2)
        yield rec
    if proc is not None and proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


# ------------------------------------------------------------------------------------------------
# report


def status(rec: dict[str, Any]) -> str:
    if "timeout" in rec:
        return "timeout"
    if "crash" in rec:
        return "crash"
    if not rec.get("converts"):
        return "no-space"
    checks = rec.get("checks", {})
    return "pass" if all(v == "ok" for v in checks.values()) else "check-fail"


def first_reason(rec: dict[str, Any]) -> str:
    if "timeout" in rec:
        return rec["timeout"]
    if "crash" in rec:
        return rec["crash"][:120]
    reasons = [r for r, _ in rec.get("reasons", [])]
    primary = [r for r in reasons if is_cause(cause_of(r))]
    if not primary and rec.get("census"):
        cls, n = next(iter(rec["census"].items()))
        return f"{n}x {cls.rsplit('.', 1)[-1]} not in the layer registry (own forward); then: {(reasons or ['-'])[0]}"[
            :160
        ]
    return ((primary or reasons)[0] if primary or reasons else "-")[:140]


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def render(records: list[dict[str, Any]]) -> str:
    lines = []
    counts = Counter(status(r) for r in records)
    lines.append(f"{len(records)} models: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    lines.append("")
    lines.append(_md_row(["model", "family", "input", "status", "hparams", "convert s", "checks / first reason"]))
    lines.append(_md_row(["---"] * 7))
    for r in records:
        st = status(r)
        if st in ("pass", "check-fail"):
            bad = {k: v for k, v in r.get("checks", {}).items() if v != "ok"}
            detail = "; ".join(f"{k}: {v}" for k, v in bad.items()) or f"searchable groups {r['searchable_groups']}"
            detail += f" | partly frozen by: {first_reason(r)}" if r.get("reasons") else ""
        else:
            detail = first_reason(r)
        size = f"{r.get('input')}" + (f" (img_size {r['img_size']})" if r.get("img_size") else "")
        lines.append(
            _md_row([r["model"], r.get("family", ""), size, st, r.get("hparams", "-"), r.get("convert_s", "-"), detail])
        )
    lines.append("")
    lines += render_causes(records)
    return "\n".join(lines)


def _model_causes(rec: dict[str, Any]) -> set[str]:
    if "reason_set" in rec:
        causes = {c for c in map(cause_of, rec["reason_set"]) if c is not None and is_cause(c)}
    else:
        causes = {c for c in rec.get("causes", {}) if is_cause(c)}
    for cls in rec.get("census", {}):
        label = _label(_census_op(cls))
        if label:
            causes.add(label)
    return causes


def _census_op(cls: str) -> str:
    base = cls[cls.index("(") + 1 : -1]
    if "BatchNorm" in base:
        return "torch.nn.functional.batch_norm"
    if base in ("LayerNorm", "GroupNorm"):
        return "torch.nn.functional.layer_norm"
    if base.startswith("Conv"):
        return "torch.nn.functional.conv2d"
    if base == "Linear":
        return "torch.nn.functional.linear"
    return cls


def render_causes(records: list[dict[str, Any]]) -> list[str]:
    blocked = [r for r in records if status(r) == "no-space"]
    converted = [r for r in records if status(r) in ("pass", "check-fail")]
    by_cause: dict[str, list[str]] = defaultdict(list)
    sole: Counter[str] = Counter()
    for r in blocked:
        cs = _model_causes(r)
        for c in cs:
            by_cause[c].append(r["model"])
        if len(cs) == 1:
            sole[next(iter(cs))] += 1
    partial: dict[str, list[str]] = defaultdict(list)
    for r in converted:
        for c in _model_causes(r):
            partial[c].append(r["model"])
    ranked = sorted(set(by_cause) | set(partial), key=lambda c: (-len(by_cause.get(c, [])), -len(partial.get(c, []))))
    lines = [f"Causes over {len(blocked)} models without a search space and {len(converted)} converted ones:", ""]
    lines.append(_md_row(["cause", "blocks (no space)", "sole cause", "also in converted", "blocked models"]))
    lines.append(_md_row(["---"] * 5))
    for c in ranked:
        lines.append(
            _md_row(
                [c, len(by_cause.get(c, [])), sole.get(c, 0), len(partial.get(c, [])), ", ".join(by_cause.get(c, []))]
            )
        )
    # greedy: each step fixes the cause that frees the most further models (a model is free once none of
    # its causes is left); ties go to the cause present in more blocked models
    lines += ["", "Greedy fix order (upper bound: a fix may reveal obstacles hidden behind an opaque value):", ""]
    fixed: set[str] = set()
    done = 0
    left = [c for c in ranked if by_cause.get(c)]
    while left:
        gain = {c: sum(1 for r in blocked if _model_causes(r) <= fixed | {c}) for c in left}
        best = max(left, key=lambda c: (gain[c], len(by_cause[c])))
        fixed.add(best)
        left.remove(best)
        lines.append(f"- + {best}: {gain[best]} of {len(blocked)} blocked models free (+{gain[best] - done})")
        done = gain[best]
    rest = [r for r in blocked if not _model_causes(r)]
    if rest:
        lines.append(f"- blocked with no cause recognised: {', '.join(r['model'] for r in rest)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help="case names (default: every case)")
    parser.add_argument("--families", nargs="*", help="only cases of these families")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model (default 300)")
    parser.add_argument("--out", type=Path, default=Path("survey_timm.json"), help="JSON lines written here")
    parser.add_argument("--report", type=Path, help="render the tables from a JSON file and exit")
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return
    if args.report:
        records = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        print(render(records))
        return
    from _common import machine_line, reproduce_line

    from tests.autonas.zoo.timm_cases import CASES

    print(machine_line(1) + "\n", flush=True)
    cases = [c for c in CASES if (not args.models or c.name in args.models)]
    cases = [c for c in cases if (not args.families or c.family in args.families)]
    records = []
    with args.out.open("w") as out:
        for rec in run_all(cases, args.timeout):
            records.append(rec)
            out.write(json.dumps(rec, default=str) + "\n")
            out.flush()
            print(
                f"{rec['model']:36s} {status(rec):10s} {rec.get('hparams', '-')!s:>4} {first_reason(rec)[:90]}",
                file=sys.stderr,
                flush=True,
            )
    print(render(records))
    print("\n" + machine_line(1).replace("machine:", "after:"))
    print(reproduce_line("survey_timm.py", argv))


if __name__ == "__main__":
    main()
