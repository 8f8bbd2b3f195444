"""Sensitivity-map evaluations that run only the part of the network downstream of the narrowed group.

An entry of the sensitivity map narrows one channel group with every other hparam at its max. Every
computation that happens before the first operation touching that group (reading a tensor of a module
bound to it, or entering such a module) is the original model's, in calibration mode and in scoring
mode alike. So, per channel group and per batch, :class:`DownstreamEvaluator` records the outputs of
the *maximal module calls that finish before that point* (the prefix), once; every evaluation of the
group's choices then runs the model with those calls short-circuited (their ``forward`` returns the
recorded output), re-estimates only the batch norms that actually run, and scores the outputs.

Why this is sound on a general model (not only an ``nn.Sequential``):

* the prefix ends at the first aten op that reads a parameter or buffer of a module bound to the
  group (a ``TorchDispatchMode`` sees every op, also functional reuse such as tied weights) or at the
  first call of such a module, whichever comes first; nothing before that can depend on the group;
* whole module calls are replayed, in the order they were recorded; the code between them (the
  parents' ``forward`` bodies) runs for real, so skip connections, functional ops and data-dependent
  code between modules keep working; a replay that does not consume exactly the recorded calls raises,
  and the group falls back to full forwards;
* recorded outputs are cloned when recorded and again when replayed, so in-place ops (``ReLU(inplace=
  True)``, ``+=``) neither corrupt the record nor see a modified value;
* batch norms called in the prefix keep the reference statistics (restored before every evaluation);
  the others are reset and re-estimated from the calibration batches exactly as
  :func:`modeopt_core.recalibrate_batchnorm` would; a batch norm called both inside and after the
  prefix makes the group fall back.

The evaluator is an exact optimisation: each entry equals a full recalibration plus a full score.
Memory is bounded by ``cache_mb`` (the recorded outputs of the group being evaluated plus, while the
next group's record is built from it, the previous one); a group whose record does not fit is
evaluated with full forward passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from modeopt_autonas.space import Hparam, SearchSpace
from modeopt_core.sdk import run_with_dummy_input

from ._records import (
    PrefixEnd,
    Record,
    RecordedCall,
    TouchGuard,
    Uncacheable,
    clone_output,
    output_nbytes,
    output_versions,
    storage_id,
)
from .scores import BatchScore

__all__ = ["DEFAULT_CACHE_MB", "DownstreamEvaluator", "ReplayError"]

DEFAULT_CACHE_MB = 1024
"""Default cap (MiB) on the upstream activations kept for one channel group (``downstream_cache_mb``)."""

_CALIB, _SCORE = "calibration", "score"


class ReplayError(RuntimeError):
    """An evaluation from a record did not repeat the recorded computation; evaluate the group in full."""


class DownstreamEvaluator:
    """Evaluates sensitivity-map entries from per-group records of the upstream activations (module doc).

    Args:
        space: the model's search space, at its max subnet (every hparam but the narrowed one stays there).
        score: the score object; its :attr:`~BatchScore.inputs` are run, its ``score_outputs`` scores.
        calibration_inputs: the model inputs of the calibration batches (None: no BN re-estimation).
        cache_mb: the memory cap of the records (MiB).
    """

    def __init__(self, space: SearchSpace, score: BatchScore, calibration_inputs: Sequence[Any] | None,
                 cache_mb: float = DEFAULT_CACHE_MB) -> None:
        self.space, self.model, self.score = space, space.model, score
        self.calibration_inputs = None if calibration_inputs is None else list(calibration_inputs)
        self.cap = int(cache_mb * 2**20)
        self.bns = [m for m in self.model.modules()
                    if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]
        self._members: dict[int, set[nn.Module]] = {}
        self._storages: dict[int, frozenset[int]] = {}
        dynamic = space.dynamic_modules()
        by_ptr: dict[int, set[int]] = {}
        for group in space.structure.groups:
            mods: set[nn.Module] = {dynamic[m.module] for m in space.members(group.id) if m.module in dynamic}
            self._members[group.id] = mods
            for mod in mods:
                for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
                    by_ptr.setdefault(storage_id(t), set()).add(group.id)
        self._storages = {ptr: frozenset(g) for ptr, g in by_ptr.items()}
        self._gid = {id(space.group_hparam(g.id)): g.id for g in space.structure.groups}
        self._reference: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._reference_tracked: dict[nn.Module, int] = {}
        self._record: Record | None = None
        self.stats = {"recorded_s": 0.0, "evaluate_s": 0.0, "recorded_groups": 0, "fallback_groups": 0}
        self.fallback_reasons: dict[str, str] = {}

    # ---------------------------------------------------------------- reference state
    def set_reference(self) -> None:
        """Take the current batch-norm buffers as the reference (the calibrated original model)."""
        self._reference = [(buf, buf.detach().clone()) for bn in self.bns for buf in bn._buffers.values()
                           if buf is not None]
        self._reference_tracked = {bn: int(tracked) for bn in self.bns
                                   if (tracked := bn._buffers.get("num_batches_tracked")) is not None}

    def restore_reference(self) -> None:
        """Put the reference batch-norm buffers back (all channels)."""
        with torch.no_grad():
            for buf, saved in self._reference:
                buf.copy_(saved)

    # ---------------------------------------------------------------- modes
    @contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        flags = {m: m.training for m in self.model.modules()}
        try:
            for m in flags:
                m.training = mode == _CALIB and isinstance(m, _BatchNorm)
            with torch.no_grad(), self.space.driver_paused():
                yield
        finally:
            for m, flag in flags.items():
                m.training = flag

    def _inputs(self, mode: str) -> list[Any]:
        return self.score.inputs if mode == _SCORE else (self.calibration_inputs or [])

    def _modes(self) -> tuple[str, ...]:
        return (_CALIB, _SCORE) if self.calibration_inputs is not None else (_SCORE,)

    # ---------------------------------------------------------------- recording a prefix
    def group_id(self, hp: Hparam) -> int:
        """The channel group of width hparam ``hp``."""
        return self._gid[id(hp)]

    def order(self, hparams: Sequence[Hparam]) -> list[Hparam]:
        """``hparams`` sorted by where their group is first used in a forward pass (one scoring batch,
        recorded), so that each group's record can be built from the previous one's."""
        first: dict[int, int] = {}
        events = [0]
        gids = {self.group_id(hp) for hp in hparams}
        member_of: dict[nn.Module, set[int]] = {}
        for gid in gids:
            for mod in self._members[gid]:
                member_of.setdefault(mod, set()).add(gid)

        def note(groups: Any) -> None:
            events[0] += 1
            for gid in groups:
                first.setdefault(gid, events[0])

        def pre(module: nn.Module, args: Any) -> None:
            note(member_of.get(module, ()))

        handles = [m.register_forward_pre_hook(pre) for m in self.model.modules()]
        try:
            with self._mode(_SCORE), TouchGuard(self._storages, note):
                run_with_dummy_input(self.model, self.score.inputs[0])
        finally:
            for h in handles:
                h.remove()
        late = events[0] + 1  # groups a scoring pass never uses go last
        return sorted(hparams, key=lambda hp: first.get(self.group_id(hp), late))

    def begin(self, hp: Hparam) -> bool:
        """Record the prefix of ``hp``'s group (built on the previous group's record where sound); False
        when the group must be evaluated with full forward passes (the reason is in ``fallback_reasons``)."""
        t0 = time.perf_counter()
        gid = self.group_id(hp)
        previous = self._record
        if previous is not None and gid in previous.touched:
            previous = None  # replaying it would skip ops that touch this group
        self._record = None
        try:
            try:
                self._record = self._capture(gid, previous)
            except Uncacheable:
                if previous is None:
                    raise
                previous = None  # the two records together exceed the cap: record from scratch
                self._record = self._capture(gid, None)
        except Uncacheable as exc:
            self.fallback_reasons[hp.name] = str(exc)
            self.stats["fallback_groups"] += 1
            return False
        finally:
            self.restore_reference()
            self.stats["recorded_s"] += time.perf_counter() - t0
        self.stats["recorded_groups"] += 1
        return True

    def end(self) -> None:
        """Drop nothing yet (the next group's record may be built from this one); restore the reference."""
        self.restore_reference()

    def release(self) -> None:
        """Free the record."""
        self._record = None

    def _capture(self, gid: int, previous: Record | None) -> Record:
        members, storages = self._members[gid], self._storages
        modules = list(self.model.modules())
        calls: dict[str, list[list[RecordedCall]]] = {}
        touched: set[int] = set()
        prefix_bns: set[nn.Module] = set()
        nbytes = 0 if previous is None else previous.nbytes
        position = 0
        stack: list[RecordedCall] = []
        eager = False

        def on_touch(groups: frozenset[int]) -> None:
            for call in stack:
                call.touched |= groups
            if gid in groups:
                raise PrefixEnd

        def pre(module: nn.Module, args: Any) -> None:
            nonlocal position
            if module in members:
                raise PrefixEnd
            stack.append(RecordedCall(module))
            position += 1

        def post(module: nn.Module, args: Any, output: Any) -> None:
            nonlocal nbytes
            call = stack.pop()
            # Lazily, the output itself (no copy: most are never modified and most calls end up
            # nested in a recorded parent); eagerly, a copy (when an in-place op changed one later)
            call.output = clone_output(output) if eager else output
            call.versions = [] if eager else output_versions(output)
            call.nbytes = output_nbytes(call.output)
            nbytes += call.nbytes - sum(child.nbytes for child in call.children)  # children are subsumed
            call.children = []
            if nbytes > self.cap:
                raise Uncacheable(f"the upstream activations exceed downstream_cache_mb={self.cap / 2**20:.0f}")
            if isinstance(module, _BatchNorm):
                prefix_bns.add(module)
            if stack:
                stack[-1].children.append(call)
                stack[-1].touched |= call.touched

        handles = []
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        first_position = 0
        try:
            for mode in self._modes():
                calls[mode] = []
                for i, x in enumerate(self._inputs(mode)):
                    before = nbytes
                    for eager in (False, True):
                        nbytes = before
                        self.restore_reference()
                        stack.clear()
                        position = 0
                        stack.append(RecordedCall(self.model))  # a sentinel parent: the model's call is recorded under it
                        with self._mode(mode), TouchGuard(storages, on_touch), self._replaying(previous, mode, i):
                            try:
                                run_with_dummy_input(self.model, x)
                            except PrefixEnd:
                                pass
                        # every call still open is an ancestor of the group's first use; their finished
                        # children are the maximal prefix calls, in order
                        maximal = [call for open_call in stack for call in open_call.children]
                        if eager or all(output_versions(c.output) == c.versions for c in maximal):
                            break  # else an op changed a recorded output in place after it was returned
                    for call in maximal:
                        clone_output(call.output, copy=False)  # outputs the record cannot copy: fall back now
                        touched |= call.touched
                    for open_call in stack:
                        touched |= open_call.touched
                    calls[mode].append(maximal)
                    if mode == _SCORE and i == 0:
                        first_position = position
        finally:
            for h in handles:
                h.remove()
        if previous is not None:
            nbytes -= previous.nbytes
        return Record(gid, calls, touched, prefix_bns, nbytes, first_position)

    # ---------------------------------------------------------------- replaying
    @contextmanager
    def _replaying(self, record: Record | None, mode: str, batch: int) -> Iterator[list[int]]:
        """Short-circuit the recorded calls of ``record`` for one batch; yields the consumed count."""
        consumed = [0]
        if record is None:
            yield consumed
            return
        sequence = record.calls[mode][batch]
        patched: dict[nn.Module, Any] = {}

        def make(module: nn.Module) -> Callable[..., Any]:
            real = module.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                pos = consumed[0]
                if pos < len(sequence) and sequence[pos].module is module:
                    consumed[0] = pos + 1
                    return clone_output(sequence[pos].output)
                return real(*args, **kwargs)

            return forward

        for call in sequence:
            if call.module not in patched:
                patched[call.module] = call.module.__dict__.get("forward")
                call.module.forward = make(call.module)
        try:
            yield consumed
        finally:
            for module, own in patched.items():
                if own is None:
                    del module.forward
                else:
                    module.forward = own

    def _run(self, mode: str) -> list[Any]:
        record = self._record
        assert record is not None
        outputs = []
        for i, x in enumerate(self._inputs(mode)):
            with self._replaying(record, mode, i) as consumed:
                outputs.append(run_with_dummy_input(self.model, x))
            if consumed[0] != len(record.calls[mode][i]):
                raise Uncacheable(
                    f"the forward pass did not repeat the recorded module calls ({consumed[0]} of "
                    f"{len(record.calls[mode][i])} replayed): data-dependent control flow?"
                )
        return outputs

    def evaluate(self) -> float:
        """The score of the current selection (only the recorded group narrowed), BN re-estimated
        downstream when calibration inputs were given. Raises ``RuntimeError`` if the replay diverged."""
        record = self._record
        assert record is not None, "begin() first"
        t0 = time.perf_counter()
        self.restore_reference()
        try:
            if self.calibration_inputs is not None:
                downstream = [bn for bn in self.bns if bn not in record.prefix_bns]
                momenta = {bn: bn.momentum for bn in downstream}
                try:
                    for bn in downstream:
                        bn.reset_running_stats()
                        bn.momentum = None
                    with self._mode(_CALIB):
                        self._run(_CALIB)
                finally:
                    for bn, momentum in momenta.items():
                        bn.momentum = momentum
                if any(self._ran(bn) for bn in record.prefix_bns):
                    raise Uncacheable("a batch norm called before the group's first use is called again after it")
            with self._mode(_SCORE):
                outputs = self._run(_SCORE)
            return float(self.score.score_outputs(outputs))
        except Uncacheable as exc:
            raise ReplayError(str(exc)) from exc
        finally:
            self.stats["evaluate_s"] += time.perf_counter() - t0

    def _ran(self, bn: nn.Module) -> bool:
        """Whether ``bn``'s statistics moved off the reference (it ran in calibration mode)."""
        tracked = bn._buffers.get("num_batches_tracked")
        saved = self._reference_tracked.get(bn)
        return tracked is not None and saved is not None and int(tracked) != saved
