"""Analytic FLOPs and parameter counts of the active subnet, from hparam values alone.

One forward pass at the max subnet under ``torch.utils.flop_counter.FlopCounterMode`` measures the
FLOPs inside every dynamic leaf module and every droppable block (elastic depth). Afterwards a
query needs no model run: a conv's or linear's FLOPs are proportional to its weight's size (spatial
sizes do not change with width or kernel size, as padding keeps the output size), everything outside
dynamic modules is a constant, and dropped blocks remove their whole measured FLOPs and parameters.
FLOPs follow ``FlopCounterMode``'s definitions (matmuls and convolutions; norms count zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .dynamic import DimBinding, DynamicModule, DynamicSequential
from .errors import HparamValueError, SubnetConfigError
from .hparam import Hparam

if TYPE_CHECKING:
    from .search_space import SearchSpace

__all__ = ["SubnetProfiler"]

# a size term: (constant, width-expression ids, hparam ids) -> constant * prod(widths) * prod(values)
_Size = tuple[int, tuple[int, ...], tuple[int, ...]]
_Conds = tuple[tuple[int, int], ...]  # alive when values[hp] > child index, for each pair


def _inside(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".")


class SubnetProfiler:
    """Measures a space once, then answers ``flops()``/``params()`` for any subnet in microseconds.

    Args:
        space: the search space (its model is run once at the max subnet, in eval mode, no grad;
            the active subnet and train/eval flags are restored afterwards).
        *args: positional arguments of a dummy input for ``space.model``.
        **kwargs: keyword arguments of that dummy input.
    """

    def __init__(self, space: SearchSpace, *args: Any, **kwargs: Any) -> None:
        self._hps: list[Hparam] = [hp for _, hp in space.named_hparams(None)]
        self._hp_index = {id(hp): i for i, hp in enumerate(self._hps)}
        self._name_index = {hp.name: i for i, hp in enumerate(self._hps)}
        self._width_ids: dict[tuple[tuple[int, int], ...], int] = {}
        model = space.model
        dynamic = space.dynamic_modules()
        leaves = {n: m for n, m in dynamic.items() if not isinstance(m, DynamicSequential)}
        blocks: dict[str, tuple[int, int]] = {}
        for seq_name, hp in space.depth_hparams().items():
            if hp.is_configurable:
                for i, child in enumerate(dynamic[seq_name]._modules):
                    blocks[f"{seq_name}.{child}" if seq_name else child] = (self._hp_index[id(hp)], i)
        measured, total = self._measure(space, leaves, blocks, args, kwargs)

        def conds(name: str) -> _Conds:
            return tuple(c for b, c in blocks.items() if _inside(name, b))

        def parent(name: str, is_block: bool) -> str | None:
            outer = [b for b in blocks if _inside(name, b) and not (is_block and b == name)]
            return max(outer, key=len) if outer else None

        exclusive = {b: measured[b] for b in blocks}
        const = total
        for name, is_block in [(b, True) for b in blocks] + [(n, False) for n in leaves]:
            p = parent(name, is_block)
            if p is None:
                const -= measured[name]
            else:
                exclusive[p] -= measured[name]
        self._block_terms = [(exclusive[b], conds(b)) for b in blocks]
        self._flops_const = const
        self._flop_terms: list[tuple[int, int, _Size, _Conds]] = []
        for name, m in leaves.items():
            tname = type(m).dynamic_flops_tensor
            t = None if tname is None else m._parameters.get(tname)
            if tname is None or t is None or measured[name] == 0:
                self._block_terms.append((measured[name], conds(name)))
                continue
            size = self._size(m._dyn_tensor_factors(tname, t.shape))
            self._flop_terms.append((measured[name], t.numel(), size, conds(name)))
        self._param_terms: list[tuple[_Size, _Conds]] = []
        self._params_const = 0
        seen: set[int] = set()
        for mname, module in model.named_modules():
            for pname, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                if mname in leaves:
                    size = self._size(module._dyn_tensor_factors(pname, p.shape))
                else:
                    size = (p.numel(), (), ())
                c = conds(mname)
                if not c and not size[1] and not size[2]:
                    self._params_const += size[0]
                else:
                    self._param_terms.append((size, c))
        self._exprs = sorted(self._width_ids, key=self._width_ids.__getitem__)

    def _measure(
        self,
        space: SearchSpace,
        leaves: dict[str, DynamicModule],
        blocks: dict[str, tuple[int, int]],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> tuple[dict[str, int], int]:
        model = space.model
        modules = dict(model.named_modules())
        saved = space.config()
        training = {m: m.training for m in model.modules()}
        measured = dict.fromkeys([*leaves, *blocks], 0)
        from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it costs ~0.1-0.3 s (triton)

        counter = FlopCounterMode(display=False)
        handles = []

        def hooks(name: str) -> None:
            starts: list[int] = []

            def pre(_m: Any, _a: Any) -> None:
                starts.append(counter.get_total_flops())

            def post(_m: Any, _a: Any, _o: Any) -> None:
                measured[name] += counter.get_total_flops() - starts.pop()

            handles.append(modules[name].register_forward_pre_hook(pre))
            handles.append(modules[name].register_forward_hook(post))

        for name in measured:
            hooks(name)
        try:
            space.sample("max")
            model.eval()
            with torch.no_grad(), counter:
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
            for m, flag in training.items():
                m.training = flag
            space.select(saved)
        return measured, counter.get_total_flops()

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

    def flops(self, config: Mapping[str, int] | None = None) -> int:
        """FLOPs of the active subnet (or of ``config`` applied on top of it, without selecting it)."""
        v = self._values(config)
        widths = [sum(v[i] * r for i, r in expr) for expr in self._exprs]
        total = self._flops_const
        for flops, full, (const, wids, vids), conds in self._flop_terms:
            if conds and any(v[h] <= c for h, c in conds):
                continue
            n = const
            for w in wids:
                n *= widths[w]
            for i in vids:
                n *= v[i]
            total += flops * n // full
        for flops, conds in self._block_terms:
            if not conds or all(v[h] > c for h, c in conds):
                total += flops
        return total

    def params(self, config: Mapping[str, int] | None = None) -> int:
        """Parameter count of the active subnet (or of ``config``), as ``sum(p.numel())`` of its export."""
        v = self._values(config)
        widths = [sum(v[i] * r for i, r in expr) for expr in self._exprs]
        total = self._params_const
        for (const, wids, vids), conds in self._param_terms:
            if conds and any(v[h] <= c for h, c in conds):
                continue
            n = const
            for w in wids:
                n *= widths[w]
            for i in vids:
                n *= v[i]
            total += n
        return total
