"""``LatencyModel``: the predicted latency of any subnet of a search space on the current device.

Built once per space and device (:meth:`LatencyModel.build`):

1. one forward pass at the max subnet records the input shapes of every call of a searchable layer
   (the *units*, :mod:`.units`);
2. every unit is timed standalone, as its exported plain layer, at each width tuple it can run at
   (or on a grid, :mod:`.table`), with random inputs of the recorded shapes: warm-up runs, then
   ``runs`` rounds interleaving all widths of a layer, medians, at the current thread count, on the
   layer's device (CUDA: events between synchronisations). Identical layers are timed once;
3. a few whole subnets are exported and timed end to end, and ``slope * sum + offset`` is fitted
   through the original subnet (:mod:`.calibration`);
4. measurements and calibrations are cached on disk per device, torch version, thread count, dtype
   and timer (:mod:`.cache`): a second build reuses them and only measures layers whose signature
   (class, hyperparameters, input shape, widths) is new.

A prediction is then a sum of table lookups: microseconds per query, no model run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modeopt_core import ConfigError, LatencyTimer, WallClockTimer, distributed
from modeopt_core.sdk import device_name, model_device, progress, time_interleaved, unpack_dummy_input

from ..dynamic import DynamicModule
from ..errors import HparamValueError, SearchSpaceError, SubnetConfigError
from ..hparam import Hparam
from .cache import LatencyCache, LatencyCacheError, LatencyCacheWarning, default_latency_cache_dir
from .calibration import calibration_configs, fit_anchored, measure_subnets
from .table import CostTable, key_text
from .units import TensorSpec, Unit, _code_hash, _meta_template, collect_units, signature_of, timed_modules

__all__ = ["LATENCY_OPTIONS", "LATENCY_REPORT_MODES", "LatencyModel"]

_log = logging.getLogger(__name__)

LATENCY_OPTIONS: dict[str, Any] = {
    "timer": None,  # a LatencyTimer; default: WallClockTimer on the model's device
    "runs": 7,  # timed rounds per layer width (medians)
    "warmup": 2,  # untimed rounds first
    "calibration_subnets": 7,  # whole subnets timed to calibrate the sum
    "calibration_runs": 10,
    "report_runs": 20,  # timed runs when results compare the chosen subnet with the original
    "max_exact": 256,  # layers with more width tuples are timed on a grid
    "grid_points": 9,  # grid values per axis
    "cache_dir": None,  # None: default_latency_cache_dir(); False: no cache
    "seed": 0,  # random inputs and random calibration subnets
    "verbose": False,  # progress bar while measuring
}
"""Options of :meth:`LatencyModel.build` and their defaults (also the searchers' ``latency_options``)."""

LATENCY_REPORT_MODES = ("final", "visited", "off")
"""Values of the searchers' ``latency_report`` key: which subnets' exported models are timed for the
results (``final``: the chosen one and the original; ``visited``: also every subnet the search
visited, for a predicted-vs-measured plot; ``off``: none, predictions only)."""


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return dict(LATENCY_OPTIONS)
    if not isinstance(options, Mapping):
        raise ConfigError(f"latency options must be a dict, got {type(options).__name__}; keys: {sorted(LATENCY_OPTIONS)}")
    unknown = sorted(set(options) - set(LATENCY_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown latency option(s) {unknown}; accepted: {sorted(LATENCY_OPTIONS)}")
    merged = {**LATENCY_OPTIONS, **options}
    for key, low in (("runs", 1), ("warmup", 0), ("calibration_subnets", 2), ("calibration_runs", 1),
                     ("report_runs", 1), ("max_exact", 1), ("grid_points", 2), ("seed", None)):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise ConfigError(f"latency option {key}={value!r} must be an int" + (f" >= {low}" if low is not None else ""))
    timer = merged["timer"]
    if timer is not None and not callable(timer):
        raise ConfigError(f"latency option timer={timer!r} must be a LatencyTimer: fn -> seconds of one call of fn")
    cache = merged["cache_dir"]
    if cache is not None and cache is not False and not isinstance(cache, (str, os.PathLike)):
        raise ConfigError(f"latency option cache_dir={cache!r} must be a path, None (default location) or False")
    if not isinstance(merged["verbose"], bool):
        raise ConfigError(f"latency option verbose={merged['verbose']!r} must be a bool")
    return merged


def _record_calls(space: Any, modules: Mapping[str, torch.nn.Module], args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Positional arguments (tensors as :class:`TensorSpec`) of every call of ``modules`` at the max subnet."""
    model = space.model
    calls: dict[str, list[tuple[Any, ...]]] = {}
    handles = []
    for name, module in modules.items():

        def pre(_m: Any, inputs: tuple[Any, ...], name: str = name) -> None:
            calls.setdefault(name, []).append(tuple(TensorSpec(a) if isinstance(a, torch.Tensor) else a for a in inputs))

        handles.append(module.register_forward_pre_hook(pre))
    saved = space.config()
    training = {m: m.training for m in model.modules()}
    try:
        with space.driver_paused():
            space.sample("max")
            model.eval()
            with torch.no_grad():
                model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
        space.select(saved)
    return calls


def _model_key(space: Any, units: Sequence[Unit], hparams: Sequence[tuple[str, Hparam]], inputs: Any) -> str:
    """What a calibration depends on besides the table: the layers, the space, the model's code, the input."""
    data = {
        "units": [[u.name, u.signature] for u in units],
        "hparams": [[n, list(hp.choices), hp.original] for n, hp in hparams],
        "modules": [[n, type(m).__qualname__, _code_hash(type(m))] for n, m in space.model.named_modules()],
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype), value.device.type]
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    return repr(value)


class LatencyModel:
    """Predicted latency in milliseconds of any subnet of ``space`` on this device (see the module doc).

    Build it with :meth:`build`. :meth:`latency` is the calibrated prediction (what constraints
    check), :meth:`measure` times exported subnets for real, :meth:`report` compares both.
    """

    def __init__(self) -> None:  # internal: use build()
        self.options: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.calibration: dict[str, Any] = {}
        self._space: Any = None
        self._hps: list[Hparam] = []
        self._names: list[str] = []
        self._name_index: dict[str, int] = {}
        self._units: list[tuple[Unit, CostTable]] = []
        self._groups: list[tuple[list[Unit], CostTable]] = []
        self._pending: list[tuple[list[Unit], CostTable, dict[tuple[int, ...], dict[int, int]] | None]] = []
        self._compiled: list[tuple[Any, ...]] = []
        self._args: tuple[Any, ...] = ()
        self._kwargs: dict[str, Any] = {}
        self._timer: LatencyTimer = WallClockTimer()
        self.slope, self.offset = 1.0, 0.0

    check_options = staticmethod(_check_options)

    # ---- building ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, space: Any, dummy_input: Any, **options: Any) -> LatencyModel:
        """Measure (or load from the cache) the latency table of ``space`` and calibrate it.

        Args:
            space: the :class:`~modeopt_autonas.space.SearchSpace`; its selection is left as it was.
            dummy_input: the model's input, ``(args..., {kwargs})`` convention; latencies belong to
                its shapes (batch size included), dtype and device.
            **options: see :data:`LATENCY_OPTIONS`.
        """
        opts = _check_options(options)
        self = cls()
        start = time.perf_counter()
        self.options, self._space = opts, space
        named = list(space.named_hparams(None))
        self._names, self._hps = [n for n, _ in named], [hp for _, hp in named]
        self._name_index = {n: i for i, n in enumerate(self._names)}
        self._args, self._kwargs = unpack_dummy_input(dummy_input)
        device = model_device(space.model)
        self._timer = opts["timer"] if opts["timer"] is not None else WallClockTimer(device)
        index = {id(hp): i for i, hp in enumerate(self._hps)}
        blocks: dict[str, tuple[int, int]] = {}
        # a block runs while its hparam (its container's trailing depth, or its own keep) exceeds the index
        for child, (hp, i) in space.block_conditions().items():
            if hp.is_configurable:
                blocks[child] = (index[id(hp)], i)
        timed = timed_modules(space, blocks)
        units = collect_units(space, self._hps, blocks, _record_calls(space, timed, self._args, self._kwargs))
        if not units:
            raise SearchSpaceError("the model ran none of its searchable layers on the dummy input; there is "
                                   "nothing to time (check the dummy input)")
        saved = space.config()
        try:
            with space.driver_paused():
                space.sample("max")
                for unit in units:
                    unit.signature = signature_of(unit.module, unit)
        finally:
            space.select(saved)
        dtype = next((p.dtype for p in space.model.parameters()), torch.get_default_dtype())
        context = {
            "device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": str(dtype), "timer": f"{type(self._timer).__module__}.{type(self._timer).__qualname__}",
        }
        self._group_units(units)
        key = _model_key(space, units, named, _describe(dummy_input))
        # Under torch.distributed rank 0 measures and every rank uses its table: the ranks of a search
        # must take the same constraint decisions.
        shared = distributed.run_on_main(lambda: self._obtain(units, context, key))
        self._fill(shared["entries"])
        self._apply_calibration(shared["calibration"])
        self.stats = {
            "units": len(units), "groups": len(self._groups),
            "variants": sum(len(t.needed) for _, t in self._groups),
            **{k: shared[k] for k in ("measured", "reused", "calibrated", "table_s", "calibration_s", "cache_file")},
            "build_s": time.perf_counter() - start, "context": context,
        }
        _log.info("latency model: %d layer calls in %d groups, %d widths measured, %d from the cache, %.2f s",
                  len(units), len(self._groups), shared["measured"], shared["reused"], self.stats["build_s"])
        return self

    def _obtain(self, units: list[Unit], context: dict[str, Any], key: str) -> dict[str, Any]:
        """Load the cache, measure what it lacks, calibrate, save; the data every rank builds from."""
        t0 = time.perf_counter()
        use_cache = self.options["cache_dir"] is not False
        cache = self._open_cache(context)
        todo, reused = [], 0
        for members, table, assigns in self._pending:
            rows = cache.entries.get(members[0].signature, {})
            missing = [k for k in table.needed if key_text(k) not in rows]
            reused += len(table.needed) - len(missing)
            if missing:
                lead = members[0]
                found = assigns if assigns is not None else _independent_assignments(lead, self._hps, missing)
                todo.append((lead, found, missing))
        measured = self._measure(todo, cache) if todo else 0
        entries = {m[0].signature: cache.entries[m[0].signature] for m, _ in self._groups}
        self._fill(entries)
        t1 = time.perf_counter()
        calibrated = self._calibrate(cache, key)
        if (measured or calibrated) and use_cache:
            cache.save()
        return {"entries": entries, "calibration": cache.calibrations[key], "measured": measured, "reused": reused,
                "calibrated": calibrated, "table_s": t1 - t0, "calibration_s": time.perf_counter() - t1,
                "cache_file": str(cache.path) if use_cache else None}

    def _open_cache(self, context: dict[str, Any]) -> LatencyCache:
        where = self.options["cache_dir"]
        cache = LatencyCache(default_latency_cache_dir() if where in (None, False) else Path(where), context)
        if where is False:
            return cache
        try:
            cache.load()
        except LatencyCacheError as exc:
            moved = cache.set_aside()
            warnings.warn(f"{exc}; it was moved to {moved} and the table is measured afresh", LatencyCacheWarning,
                          stacklevel=3)
        return cache

    def _group_units(self, units: list[Unit]) -> None:
        """Group identical units (same signature and widths) under one cost table each."""
        groups: dict[tuple[Any, ...], list[Unit]] = {}
        for unit in units:
            axis_values = unit.axis_values(self._hps)
            gkey = (unit.signature, tuple(tuple(v) for v in axis_values), unit.independent())
            groups.setdefault(gkey, []).append(unit)
        self._groups, self._pending, by_unit = [], [], {}
        for (_sig, axis_values, independent), members in groups.items():
            reachable = None if independent else members[0].tuples(self._hps)
            table = CostTable(axis_values, reachable, self.options["max_exact"], self.options["grid_points"])
            self._groups.append((members, table))
            self._pending.append((members, table, reachable))
            for u in members:
                by_unit[id(u)] = table
        self._units = [(u, by_unit[id(u)]) for u in units]
        # per unit: (single-term axes as (hparam, repeat) or None, general axes, conditions, memo, table)
        self._compiled = []
        for u, t in self._units:
            terms = tuple(a.terms for a in u.axes)
            simple = tuple(a[0] for a in terms) if all(len(a) == 1 for a in terms) else None
            self._compiled.append((simple, terms, u.conds, t.memo, t))

    def _fill(self, entries: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
        for members, table in self._groups:
            rows = entries[members[0].signature]
            table.fill({k: float(rows[key_text(k)][0]) for k in table.needed})

    def _measure(self, todo: list[Any], cache: LatencyCache) -> int:
        opts = self.options
        gen = torch.Generator().manual_seed(opts["seed"])
        done = 0
        with progress(total=sum(len(m) for *_, m in todo), desc="latency table", enabled=opts["verbose"],
                      unit="width") as bar:
            for lead, assigns, missing in todo:
                buffers = {f"{kind}.{n}": t.detach().reshape(-1)
                           for kind in ("_parameters", "_buffers")
                           for n, t in getattr(lead.module, kind).items() if t is not None}
                inputs = [_random_like(spec, gen) for spec in lead.inputs]
                template = _meta_template(lead.module) if isinstance(lead.module, DynamicModule) else lead.module
                fns = {k: lead.make_variant(k, assigns[k], template, buffers, inputs) for k in missing}
                with torch.inference_mode():
                    stats = time_interleaved(fns, opts["runs"], opts["warmup"], self._timer)
                rows = cache.entries.setdefault(lead.signature, {})
                for k, st in stats.items():
                    rows[key_text(k)] = [st.median_ms, st.spread]
                done += len(missing)
                bar.update(len(missing))
        return done

    def _calibrate(self, cache: LatencyCache, key: str) -> bool:
        """Reuse the cached calibration if its subnets' sums still match the table; else measure. Returns
        whether it measured."""
        record = cache.calibrations.get(key)
        if record is not None and self._still_valid(record):
            self._apply_calibration(record)
            return False
        opts = self.options
        named = list(zip(self._names, self._hps))
        configurable = [(n, hp) for n, hp in named if hp.is_configurable]
        configs = calibration_configs(configurable, opts["calibration_subnets"], opts["seed"])
        measured = measure_subnets(self._space, configs, self._args, self._kwargs, opts["calibration_runs"],
                                   opts["warmup"], self._timer)
        raw = [self.raw_latency(c) for c in configs]
        slope, offset = fit_anchored(raw, measured)
        record = {"slope": slope, "offset": offset,
                  "points": [{"config": dict(c), "raw": r, "measured": m} for c, r, m in zip(configs, raw, measured)]}
        cache.calibrations[key] = record
        self._apply_calibration(record)
        return True

    def _still_valid(self, record: Mapping[str, Any]) -> bool:
        try:
            return all(math.isclose(self.raw_latency(p["config"]), p["raw"], rel_tol=1e-9) for p in record["points"])
        except (SubnetConfigError, KeyError):
            return False

    def _apply_calibration(self, record: Mapping[str, Any]) -> None:
        self.slope, self.offset = float(record["slope"]), float(record["offset"])
        points = [dict(p, predicted=self.slope * p["raw"] + self.offset) for p in record["points"]]
        errors = [(p["predicted"] - p["measured"]) / p["measured"] for p in points[1:]]
        self.calibration = {
            "slope": self.slope, "offset": self.offset, "points": points,
            "reference_ms": points[0]["measured"],
            "max_abs_error": max((abs(e) for e in errors), default=0.0),
        }

    # ---- queries ----------------------------------------------------------------------------------
    def _values(self, config: Mapping[str, int] | None) -> list[int]:
        values = [hp.active for hp in self._hps]
        for name, value in (config or {}).items():
            i = self._name_index.get(name)
            if i is None:
                raise SubnetConfigError(f"no hparam named {name!r} in this search space")
            try:
                values[i] = self._hps[i].validate(value)
            except HparamValueError as e:
                raise SubnetConfigError(str(e)) from None
        return values

    def raw_latency(self, config: Mapping[str, int] | None = None) -> float:
        """Sum of the table's layer latencies (ms) of the active subnet (or of ``config`` on top of it)."""
        values = self._values(config)
        total = 0.0
        for simple, axes, conds, memo, table in self._compiled:  # the hot loop of every constraint check
            if conds and not all(values[h] > c for h, c in conds):
                continue
            if simple is not None:
                key = tuple([values[i] * r for i, r in simple])
            else:
                key = tuple([sum([values[i] * r for i, r in terms]) for terms in axes])
            hit = memo.get(key)
            total += hit if hit is not None else table.cost(key)
        return total

    def latency(self, config: Mapping[str, int] | None = None) -> float:
        """Predicted milliseconds of the active subnet (or of ``config``), exported, on this device."""
        return self.slope * self.raw_latency(config) + self.offset

    def layer_latencies(self, config: Mapping[str, int] | None = None) -> dict[str, float]:
        """Table milliseconds of each layer call of the active subnet (or of ``config``); 0 when dropped."""
        values = self._values(config)
        return {u.name: table.cost(u.key(values)) if u.alive(values) else 0.0 for u, table in self._units}

    def original_config(self) -> dict[str, int]:
        """The original subnet (what :attr:`reference_ms` measured)."""
        return {n: hp.original for n, hp in zip(self._names, self._hps)}

    @property
    def reference_ms(self) -> float:
        """Measured milliseconds of the original subnet (what percentage limits refer to)."""
        return float(self.calibration["reference_ms"])

    def measure(self, configs: Sequence[Mapping[str, int]], runs: int | None = None) -> list[float]:
        """Median milliseconds of each subnet's exported model, timed round-robin (``report_runs``)."""
        runs = self.options["report_runs"] if runs is None else runs
        return measure_subnets(self._space, configs, self._args, self._kwargs, runs, 3, self._timer)

    def report(self, config: Mapping[str, int], visited: Sequence[Mapping[str, int]] = ()) -> dict[str, Any]:
        """Predicted vs measured latency of ``config`` and the original subnet (and of ``visited``)."""
        configs = [self.original_config(), dict(config), *[dict(v) for v in visited]]
        measured = self.measure(configs)
        # the original's prediction is the reference by construction, also under a line refitted elsewhere
        predicted = [self.reference_ms, *[self.latency(c) for c in configs[1:]]]
        return {
            "predicted_before": predicted[0], "predicted_after": predicted[1],
            "measured_before": measured[0], "measured_after": measured[1],
            "predicted_ratio": predicted[1] / predicted[0], "measured_ratio": measured[1] / measured[0],
            "error": (predicted[1] - measured[1]) / measured[1],
            # the same for the ratios to the original timed alongside: unmoved by a machine that got
            # faster or slower since the calibration (which moves the absolute error)
            "ratio_error": (predicted[1] / predicted[0]) / (measured[1] / measured[0]) - 1.0,
            "visited": [{"predicted": p, "measured": m} for p, m in zip(predicted[2:], measured[2:])],
            "calibration_max_abs_error": self.calibration["max_abs_error"],
            "table": {k: v for k, v in self.stats.items() if k != "context"},
            "runs": self.options["report_runs"],
        }

    # ---- the table --------------------------------------------------------------------------------
    def slow_widths(self, tolerance: float = 0.05) -> list[dict[str, Any]]:
        """Width tuples of a layer that run slower than a wider one by more than ``tolerance``
        (e.g. widths that are not a multiple of the hardware's vector width)."""
        out = []
        for members, table in self._groups:
            axes = [a.name for a in members[0].axes]
            for key, ms, wider, wider_ms in table.slow(tolerance):
                out.append({"layers": [u.name for u in members], "widths": dict(zip(axes, key)), "ms": ms,
                            "wider": dict(zip(axes, wider)), "wider_ms": wider_ms})
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One record per layer group: its calls, axes, mode (exact/grid) and measured milliseconds."""
        return [{"layers": [u.name for u in members], "signature": members[0].signature,
                 "axes": [a.name for a in members[0].axes], **table.describe(),
                 "ms": {key_text(k): v for k, v in table.measured.items()}} for members, table in self._groups]

    def table(self, tolerance: float = 0.05) -> str:
        """A readable summary: per layer group its widths, fastest/slowest ms and its widths that run
        slower than a wider one (the three worst, by how much)."""
        slow: dict[str, list[dict[str, Any]]] = {}
        for s in self.slow_widths(tolerance):
            slow.setdefault(s["layers"][0], []).append(s)
        lines = [f"{'layer(s)':<34} {'axes':<12} {'mode':<5} {'widths':>6} {'min ms':>8} {'max ms':>8}  slower than a wider width"]
        for row in self.rows():
            layers = row["layers"][0] + (f" +{len(row['layers']) - 1}" if len(row["layers"]) > 1 else "")
            values = list(row["ms"].values())
            bad = sorted(slow.get(row["layers"][0], []), key=lambda b: -b["ms"] / b["wider_ms"])  # worst first
            text = ", ".join(f"{_fmt_widths(s['widths'])} ({s['ms']:.3f} > {s['wider_ms']:.3f} at "
                             f"{_fmt_widths(s['wider'])})" for s in bad[:3]) + (f" (+{len(bad) - 3})" if len(bad) > 3 else "")
            lines.append(f"{layers:<34} {','.join(row['axes']):<12} {row['mode']:<5} {len(values):>6} "
                         f"{min(values):>8.3f} {max(values):>8.3f}  {text or '-'}")
        c = self.calibration
        lines.append(f"calibration: measured ~ {c['slope']:.3f} x table sum + {c['offset']:.3f} ms over "
                     f"{len(c['points'])} subnets (max error {100 * c['max_abs_error']:.1f}%)")
        return "\n".join(lines)


def _fmt_widths(widths: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in widths.items())


def _independent_assignments(unit: Unit, hps: Sequence[Hparam],
                             keys: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], dict[int, int]]:
    per_axis = unit.axis_values(hps)
    return {k: {i: c for a, v in enumerate(k) for i, c in per_axis[a][v].items()} for k in keys}


def _random_like(spec: Any, gen: torch.Generator) -> Any:
    if not isinstance(spec, TensorSpec):
        return spec
    if spec.dtype.is_floating_point:
        return torch.randn(spec.shape, generator=gen, dtype=torch.float32).to(device=spec.device, dtype=spec.dtype)
    return torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
