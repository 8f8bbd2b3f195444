"""Analytic FLOPs and parameter counts of the active subnet, from hparam values alone.

One forward pass at the max subnet under ``torch.utils.flop_counter.FlopCounterMode`` measures the
FLOPs inside every module. Afterwards a query needs no model run:

* a dynamic conv's or linear's FLOPs are proportional to its weight's size (spatial sizes do not
  change with width or kernel size, as padding keeps the output size);
* FLOPs computed directly by other modules (attention's ``q @ k^T`` and ``attn @ v``, or
  ``scaled_dot_product_attention``: proportional to the number of heads) are products of powers of the
  widths they depend on. Which widths, and which powers, is measured once by *probing*: one more
  forward per width hparam at its smallest choice (only when such FLOPs exist);
* dropped blocks (elastic depth) remove their whole measured FLOPs and parameters; everything else is
  a constant;
* a dynamic layer whose FLOPs are a sum of parts that scale differently (attention: projections scale
  with heads x width, the attention matmuls with the heads alone) names the parts itself
  (``dynamic_flops_terms``); they are checked against the measured FLOPs.

FLOPs follow ``FlopCounterMode``'s definitions (matmuls, convolutions, attention; norms count zero).
Its CPU attention kernel and ``nn.MultiheadAttention``'s fused inference kernel have no formula in
torch, so ones are registered when this module is imported (the same as for the other attention
kernels). The measuring forward runs under ``no_grad`` (as a user's count would), or with autograd on
where ``FlopCounterMode`` fails under ``no_grad`` (views of parameters passed between modules), and with
torch's fused attention fast paths off, so that FLOPs are attributed to the modules that compute them
(``nn.TransformerEncoderLayer``'s fused kernel bypasses its submodules and has no formula at all).

With a :class:`~modeopt_autonas.space.LatencyModel` attached (``latency_model``), the profiler also
answers ``latency()``: the model's calibrated prediction in milliseconds, so the ``latency``
constraint is checked like the other two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeopt_core import ConstraintError

from .dynamic import DimBinding, DynamicBlock, DynamicModule, DynamicSequential, DynamicTensors, FlopsTerm
from .errors import HparamValueError, SubnetConfigError
from .hparam import Hparam

if TYPE_CHECKING:
    from .latency import LatencyModel
    from .search_space import SearchSpace

__all__ = ["SubnetProfiler", "register_attention_flops"]

_log = logging.getLogger(__name__)

# a size term: (constant, width-expression ids, hparam ids) -> constant * prod(widths) * prod(values)
_Size = tuple[int, tuple[int, ...], tuple[int, ...]]
_Conds = tuple[tuple[int, int], ...]  # alive when values[hp] > child index, for each pair
_Powers = tuple[tuple[int, int], ...]  # (hparam index, exponent): flops scale as prod (v / max) ** e


def _inside(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".")


def register_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU attention kernel (torch registers only the CUDA ones) and the fused
    kernel of ``nn.MultiheadAttention``'s inference fast path (no formula in torch: it counted zero).

    Runs when the space is imported if ``torch.utils.flop_counter`` is loaded already, else at the first
    FLOP count of a :class:`SubnetProfiler` (importing it costs 0.1-0.2 s, see the import-time bench).
    """
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None and op not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(op)
        def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            # shapes (get_raw=False): the same count as the CUDA kernels (two matmuls per head)
            return int(flop_counter.sdpa_flop_count(query, key, value))

    mha = getattr(torch.ops.aten, "_native_multi_head_attention", None)
    if mha is not None and mha not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(mha)
        def _fused_mha(query: Any, key: Any, value: Any, embed_dim: int, num_heads: int, qkv_weight: Any,
                       qkv_bias: Any, proj_weight: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            # the matmuls of the slow path: q, k, v projections, q @ k^T and weights @ v, output projection
            (batch, length, width), source = query, key[1]
            inner = qkv_weight[0] // 3
            projections = 2 * batch * (length + 2 * source) * width * inner + 2 * batch * length * inner * proj_weight[0]
            return int(projections + 4 * batch * length * source * inner)


def _flop_counter_mode() -> Any:
    """A fresh ``FlopCounterMode`` (imported lazily) that counts attention."""
    from torch.utils.flop_counter import FlopCounterMode

    register_attention_flops()
    return FlopCounterMode(display=False)


@contextlib.contextmanager
def _unfused_attention() -> Iterator[None]:
    """Torch's fused attention fast paths off (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``)."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None:
        yield
        return
    enabled = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(enabled)


if "torch.utils.flop_counter" in sys.modules:  # so that every FlopCounterMode from now on counts attention
    register_attention_flops()


class SubnetProfiler:
    """Measures a space once, then answers ``flops()``/``params()`` for any subnet in microseconds.

    Args:
        space: the search space (its model is run at the max subnet, in eval mode; the active subnet
            and train/eval flags are restored afterwards).
        *args: positional arguments of a dummy input for ``space.model``.
        **kwargs: keyword arguments of that dummy input.
    """

    latency_model: LatencyModel | None = None
    """The latency model ``latency()`` asks (None: the profiler cannot check latency)."""

    def __init__(self, space: SearchSpace, *args: Any, **kwargs: Any) -> None:
        register_attention_flops()
        self._hps: list[Hparam] = [hp for _, hp in space.named_hparams(None)]
        self._hp_index = {id(hp): i for i, hp in enumerate(self._hps)}
        self._name_index = {hp.name: i for i, hp in enumerate(self._hps)}
        self._width_ids: dict[tuple[tuple[int, int], ...], int] = {}
        model = space.model
        dynamic = space.dynamic_modules()
        # containers (depth, tensor holders) are not leaves: their FLOPs are their children's, counted there
        leaves = {
            n: m for n, m in dynamic.items() if not isinstance(m, (DynamicSequential, DynamicTensors, DynamicBlock))
        }
        blocks = {
            child: (self._hp_index[id(hp)], index)
            for child, (hp, index) in space.block_conditions().items()
            if hp.is_configurable
        }
        saved, training = space.config(), {m: m.training for m in model.modules()}
        try:
            model.eval()
            space.sample("max")
            direct, total, terms = self._direct_flops(model, set(leaves), args, kwargs, leaves)
            powers = self._probe(space, model, set(leaves), direct, args, kwargs)
        finally:
            for m, flag in training.items():
                m.training = flag
            space.select(saved)

        def conds(name: str) -> _Conds:
            return tuple(c for b, c in blocks.items() if _inside(name, b))

        self._flops_const = total - sum(direct.values())  # FLOPs outside every module (root-level ops)
        self._block_terms: list[tuple[int, _Conds]] = []
        self._op_terms: list[tuple[int, _Powers, _Conds]] = []
        self._flop_terms: list[tuple[int, int, _Size, _Conds]] = []
        for name, flops in direct.items():
            if not flops:
                continue
            if name in terms and self._add_terms(name, flops, terms[name], conds(name)):
                continue
            leaf = leaves.get(name)
            tname = type(leaf).dynamic_flops_tensor if leaf is not None else None
            t = None if leaf is None or tname is None else leaf._parameters.get(tname)
            if leaf is not None and tname is not None and t is not None:
                size = self._size(leaf._dyn_tensor_factors(tname, t.shape))
                self._flop_terms.append((flops, t.numel(), size, conds(name)))
            elif powers.get(name):
                self._op_terms.append((flops, powers[name], conds(name)))
            elif conds(name):
                self._block_terms.append((flops, conds(name)))
            else:
                self._flops_const += flops
        self._param_terms: list[tuple[_Size, _Conds]] = []
        self._params_const = 0
        seen: set[int] = set()
        for mname, module in model.named_modules():
            for pname, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(module, DynamicModule):
                    size = self._size(module._dyn_tensor_factors(pname, p.shape))
                else:
                    size = (p.numel(), (), ())
                c = conds(mname)
                if not c and not size[1] and not size[2]:
                    self._params_const += size[0]
                else:
                    self._param_terms.append((size, c))
        self._exprs = sorted(self._width_ids, key=self._width_ids.__getitem__)

    def _add_terms(self, name: str, flops: int, terms: list[FlopsTerm], conds: _Conds) -> bool:
        """Count a layer's measured FLOPs by the terms it names; False (after a warning) when they disagree."""
        named = sum(f for f, _ in terms)
        if named != flops:
            _log.warning("FLOPs terms of %s add up to %d, but %d were measured; scaling them with its weight",
                         name, named, flops)
            return False
        for f, factors in terms:
            full = 1
            for factor in factors:
                full *= factor.full if isinstance(factor, DimBinding) else (
                    factor.original if isinstance(factor, Hparam) else int(factor))
            self._flop_terms.append((f, full, self._size(factors), conds))
        return True

    # ---- measuring --------------------------------------------------------------------------------
    @staticmethod
    def _direct_flops(
        model: nn.Module, leaves: set[str], args: Sequence[Any], kwargs: Mapping[str, Any],
        termed: Mapping[str, nn.Module] | None = None,
    ) -> tuple[dict[str, int], int, dict[str, list[FlopsTerm]]]:
        """FLOPs each module computes itself (a dynamic leaf: everything inside it) and the total; and, for the
        modules of ``termed`` that name their FLOPs terms, those terms of every call."""
        inclusive: dict[str, int] = {}
        terms: dict[str, list[FlopsTerm]] = {}
        counter = _flop_counter_mode()
        handles = []
        named = list(model.named_modules())
        inside_leaf = {n for n, _ in named if any(n != leaf and _inside(n, leaf) for leaf in leaves)}

        def hooks(name: str, module: nn.Module) -> None:
            starts: list[int] = []

            def pre(_m: Any, _a: Any) -> None:
                starts.append(counter.get_total_flops())

            def post(_m: Any, _a: Any, _o: Any) -> None:
                inclusive[name] = inclusive.get(name, 0) + counter.get_total_flops() - starts.pop()

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))

        def record_terms(name: str, module: DynamicModule) -> None:
            def pre(_m: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
                found = module.dynamic_flops_terms(a, kw)
                if found is not None:
                    terms.setdefault(name, []).extend(found)

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))

        for name, module in named:
            if name and name not in inside_leaf:
                hooks(name, module)
        for name, module in (termed or {}).items():
            if isinstance(module, DynamicModule) and name not in inside_leaf:
                record_terms(name, module)
        try:
            try:
                with torch.no_grad(), _unfused_attention(), counter:
                    model(*args, **kwargs)
            except (AssertionError, RuntimeError):
                # FlopCounterMode's module tracker can fail under no_grad (a no-grad view of a parameter
                # passed to a submodule, e.g. CaiT's class token): count with autograd on instead
                inclusive.clear()
                terms.clear()
                counter = _flop_counter_mode()
                with torch.enable_grad(), _unfused_attention(), counter:
                    model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        direct = dict(inclusive)
        for name in inclusive:
            parent = name.rpartition(".")[0]
            while parent and parent not in inclusive:
                parent = parent.rpartition(".")[0]
            if parent:
                direct[parent] -= inclusive[name]
        return direct, counter.get_total_flops(), terms

    def _probe(
        self, space: SearchSpace, model: nn.Module, leaves: set[str], direct: dict[str, int],
        args: Sequence[Any], kwargs: Mapping[str, Any],
    ) -> dict[str, _Powers]:
        """For modules computing FLOPs themselves (not dynamic leaves): the powers of the widths they
        scale with, one probing forward per width hparam at its smallest choice."""
        ops = {n: f for n, f in direct.items() if f and n not in leaves}
        if not ops:
            return {}
        groups = {id(hp) for hp in space._built.group_hparams.values()}
        found: dict[str, list[tuple[int, int]]] = {n: [] for n in ops}
        for name, hp in space.named_hparams(True):
            if id(hp) not in groups:
                continue
            space.sample("max")
            space.select({name: hp.min}, strict=False)
            probed, _, _ = self._direct_flops(model, leaves, args, kwargs)
            ratio_w = hp.min / hp.max
            for op, flops in ops.items():
                got = probed.get(op, 0)
                if got == flops:
                    continue
                e = round(math.log(got / flops) / math.log(ratio_w)) if got > 0 else 0
                if e < 1 or abs(flops * ratio_w**e - got) > 1e-6 * flops + 1:
                    _log.warning("FLOPs of %s change with %s but not as a power of it; counted at the max", op, name)
                    continue
                found[op].append((self._hp_index[id(hp)], e))
        space.sample("max")
        return {op: tuple(p) for op, p in found.items()}

    def _size(self, factors: Sequence[int | DimBinding | Hparam]) -> _Size:
        const, widths, values = 1, [], []
        for f in factors:
            if isinstance(f, DimBinding):
                key = tuple((self._hp_index[id(hp)], r) for hp, r in f.segments)
                widths.append(self._width_ids.setdefault(key, len(self._width_ids)))
            elif isinstance(f, Hparam):
                values.append(self._hp_index[id(f)])
            else:
                const *= int(f)
        return const, tuple(widths), tuple(values)

    # ---- queries ----------------------------------------------------------------------------------
    def _values(self, config: Mapping[str, int] | None) -> list[int]:
        values = [hp.active for hp in self._hps]
        if config:
            for name, value in config.items():
                i = self._name_index.get(name)
                if i is None:
                    raise SubnetConfigError(f"no hparam named {name!r} in this search space")
                try:
                    values[i] = self._hps[i].validate(value)
                except HparamValueError as e:
                    raise SubnetConfigError(str(e)) from None
        return values

    @staticmethod
    def _alive(v: list[int], conds: _Conds) -> bool:
        return not conds or all(v[h] > c for h, c in conds)

    def _sized(self, v: list[int], widths: list[int], size: _Size) -> int:
        const, wids, vids = size
        n = const
        for w in wids:
            n *= widths[w]
        for i in vids:
            n *= v[i]
        return n

    def flops(self, config: Mapping[str, int] | None = None) -> int:
        """FLOPs of the active subnet (or of ``config`` applied on top of it, without selecting it)."""
        v = self._values(config)
        widths = [sum(v[i] * r for i, r in expr) for expr in self._exprs]
        total = self._flops_const
        for flops, full, size, conds in self._flop_terms:
            if self._alive(v, conds):
                total += flops * self._sized(v, widths, size) // full
        for flops, conds in self._block_terms:
            if self._alive(v, conds):
                total += flops
        for flops, powers, conds in self._op_terms:
            if self._alive(v, conds):
                num = den = 1
                for i, e in powers:
                    num *= v[i] ** e
                    den *= self._hps[i].max ** e
                total += flops * num // den
        return total

    def params(self, config: Mapping[str, int] | None = None) -> int:
        """Parameter count of the active subnet (or of ``config``), as ``sum(p.numel())`` of its export."""
        v = self._values(config)
        widths = [sum(v[i] * r for i, r in expr) for expr in self._exprs]
        return self._params_const + sum(
            self._sized(v, widths, size) for size, conds in self._param_terms if self._alive(v, conds)
        )

    def latency(self, config: Mapping[str, int] | None = None) -> float:
        """Predicted milliseconds of the active subnet (or of ``config``) from :attr:`latency_model`."""
        if self.latency_model is None:
            raise ConstraintError(
                "this profiler has no latency model, so it cannot check a latency constraint; attach one "
                "(profiler.latency_model = LatencyModel.build(space, dummy_input))"
            )
        return self.latency_model.latency(config)
