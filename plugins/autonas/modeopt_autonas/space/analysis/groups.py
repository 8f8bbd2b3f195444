"""Union-find over channel groups plus the module bindings that reference them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..structure import Binding, ChannelGroup, FrozenItem, Segment

__all__ = ["GroupTable", "RawBinding", "frozen_items"]


@dataclass
class RawBinding:
    """A binding under construction: segments hold union-find ids (resolved at the end)."""

    module: str
    role: str
    segments: list[tuple[int, int]]  # (group id, repeat)
    tensors: tuple[tuple[str, int], ...] = ()  # further (tensor, dim) pairs the role slices


@dataclass
class _Root:
    size: int
    producer: bool
    reasons: list[str] = field(default_factory=list)


class GroupTable:
    """Channel groups that merge when tied; a frozen reason sticks to the merged group.

    Besides plain groups there are two kinds of *composite* groups, made when an op reveals that a
    group's channels have a finer or coarser structure:

    * a **refined** group is the concatenation of its parts (a producer whose output is chunked, or a
      group tied to a concatenation): binding ``(g, r)`` stands for ``(part, r)`` of every part;
    * a **coarse** group has ``unit`` features per channel of its child (``H * d`` features viewed as
      ``H`` heads of ``d``, or ``kv`` heads each repeated ``n`` times): binding ``(g, r)`` stands for
      ``(child, r * unit)``.

    Composite groups are never frozen themselves; freezing one freezes what it is made of.
    """

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._info: dict[int, _Root] = {}
        self._parts: dict[int, list[int]] = {}  # root -> parts (refined)
        self._coarse: dict[int, tuple[int, int]] = {}  # root -> (child, unit)
        self._coarse_of: dict[tuple[int, int], int] = {}  # (child root, unit) -> coarse group
        self.bindings: dict[tuple[str, str], RawBinding] = {}

    def new(self, size: int, *, producer: bool, reason: str = "") -> int:
        """A fresh group of ``size`` channels; frozen at once when ``reason`` is given."""
        gid = len(self._parent)
        self._parent.append(gid)
        self._info[gid] = _Root(size, producer, [reason] if reason else [])
        return gid

    def find(self, gid: int) -> int:
        root = gid
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[gid] != root:  # path compression
            self._parent[gid], gid = root, self._parent[gid]
        return root

    def size(self, gid: int) -> int:
        return self._info[self.find(gid)].size

    # ---- structure ---------------------------------------------------------------------------------
    def expand(self, gid: int, repeat: int = 1) -> list[tuple[int, int]]:
        """The plain groups ``(gid, repeat)`` stands for, in order, as ``(group, repeat)`` pairs."""
        root = self.find(gid)
        if root in self._parts:
            return [e for part in self._parts[root] for e in self.expand(part, repeat)]
        if root in self._coarse:
            child, unit = self._coarse[root]
            return self.expand(child, repeat * unit)
        return [(root, repeat)]

    def is_frozen(self, gid: int) -> bool:
        return any(self._info[g].reasons for g, _ in self.expand(gid))

    def freeze(self, gid: int, reason: str) -> None:
        for g, _ in self.expand(gid):
            reasons = self._info[g].reasons
            if reason not in reasons:
                reasons.append(reason)

    def _derive(self, root: int, size: int) -> int:
        """A new plain group carrying ``root``'s producer flag and reasons."""
        info = self._info[root]
        gid = self.new(size, producer=info.producer)
        self._info[gid].reasons.extend(info.reasons)
        return gid

    def units(self, gid: int, unit: int) -> int | None:
        """The group whose channels are ``unit``-feature units of ``gid`` (``gid`` becomes coarse), e.g.
        the heads of a projection viewed as ``(heads, head_dim)``; None when ``gid`` cannot be cut so."""
        root = self.find(gid)
        if unit == 1:
            return root
        if root in self._coarse:
            child, have = self._coarse[root]
            if have == unit:
                return self.find(child)
            if have % unit == 0:  # finer units than recorded: the child's channels are have/unit of ours
                return self.coarse(child, have // unit)
            if unit % have == 0:  # coarser units: units of the child
                return self.units(child, unit // have)
            return None
        if root in self._parts or self._info[root].size % unit:
            return None
        child = self._derive(root, self._info[root].size // unit)
        self._info[child].reasons = self._info[root].reasons
        self._coarse[root] = (child, unit)
        self._coarse_of[(child, unit)] = root
        return child

    def coarse(self, gid: int, unit: int) -> int:
        """The group of ``unit`` features per channel of ``gid`` (e.g. each kv head repeated ``unit`` times)."""
        root = self.find(gid)
        if unit == 1:
            return root
        key = (root, unit)
        if key in self._coarse_of:
            return self.find(self._coarse_of[key])
        info = self._info[root]
        gid = self.new(info.size * unit, producer=info.producer)
        self._coarse[gid] = (root, unit)
        self._coarse_of[key] = gid
        return gid

    def split(self, segs: tuple[int, ...], sizes: list[int]) -> list[tuple[int, ...]] | None:
        """Cut the concatenation ``segs`` into consecutive pieces of ``sizes`` (refining groups a cut falls
        inside); returns each piece's groups, or None when the sizes do not add up."""
        leaves = [g for s in segs for g in self._plain_parts(s)]
        if sum(sizes) != sum(self.size(g) for g in leaves):
            return None
        cuts, at = set(), 0
        for n in sizes[:-1]:
            at += n
            cuts.add(at)
        pieces: list[list[int]] = [[] for _ in sizes]
        start, index = 0, 0
        bounds = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        for g in leaves:
            size = self.size(g)
            inner = sorted(c - start for c in cuts if start < c < start + size)
            parts = self._refine(g, inner) if inner else [g]
            for part in parts:
                while start >= bounds[index]:
                    index += 1
                pieces[index].append(part)
                start += self.size(part)
        return [tuple(p) for p in pieces]

    def _plain_parts(self, gid: int) -> list[int]:
        """``gid`` as a sequence of non-refined groups (coarse groups stay whole)."""
        root = self.find(gid)
        if root in self._parts:
            return [g for part in self._parts[root] for g in self._plain_parts(part)]
        return [root]

    def _refine(self, gid: int, cuts: list[int]) -> list[int]:
        """Refine ``gid`` at the offsets ``cuts`` (inside it); returns its new parts."""
        root = self.find(gid)
        bounds = [0, *cuts, self._info[root].size]
        if root in self._coarse:
            child, unit = self._coarse[root]
            if any(c % unit for c in cuts):
                return [root]  # a cut inside a unit: leave it whole (the caller freezes what misfits)
            parts = [self.coarse(p, unit) for p in self._refine(child, [c // unit for c in cuts])]
        else:
            parts = [self._derive(root, hi - lo) for lo, hi in itertools.pairwise(bounds)]
        self._parts[root] = parts
        return parts

    def _merge_roots(self, ra: int, rb: int) -> None:
        """Make two already aligned groups one union-find set (their structure entries are equivalent)."""
        ra, rb = self.find(ra), self.find(rb)
        if ra == rb:
            return
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self._parent[gone] = keep
        if gone in self._parts:
            self._parts.setdefault(keep, self._parts.pop(gone))
        if gone in self._coarse:
            self._coarse.setdefault(keep, self._coarse.pop(gone))
        info = self._info.pop(gone)
        root = self._info[keep]
        root.producer = root.producer or info.producer
        root.reasons.extend(r for r in info.reasons if r not in root.reasons)

    def union(self, a: int, b: int, where: str) -> None:
        """Tie two groups; groups of different widths cannot be tied and are frozen instead."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ia, ib = self._info[ra], self._info[rb]
        if ia.size != ib.size:
            reason = f"width mismatch ({ia.size} vs {ib.size}) {where}"
            self.freeze(ra, reason)
            self.freeze(rb, reason)
            return
        if ra in self._parts or rb in self._parts:
            if self.union_seq((ra,), (rb,), where):
                self._merge_roots(ra, rb)
            return
        if ra in self._coarse or rb in self._coarse:
            if ra not in self._coarse:
                ra, rb = rb, ra
            child, unit = self._coarse[ra]
            other = self.units(rb, unit)
            if other is None:
                reason = f"incompatible channel units (heads of {unit}) {where}"
                self.freeze(ra, reason)
                self.freeze(rb, reason)
                return
            self.union(child, other, where)
            self._merge_roots(ra, rb)
            return
        self._merge_roots(ra, rb)

    def union_seq(self, a: tuple[int, ...], b: tuple[int, ...], where: str) -> bool:
        """Tie two concatenations channel by channel (refining groups to common cuts); False when they
        cannot be aligned (then both are frozen)."""
        la = [g for s in a for g in self._plain_parts(s)]
        lb = [g for s in b for g in self._plain_parts(s)]
        sizes_a, sizes_b = [self.size(g) for g in la], [self.size(g) for g in lb]
        if sum(sizes_a) != sum(sizes_b):
            for g in (*a, *b):
                self.freeze(g, f"width mismatch ({sum(sizes_a)} vs {sum(sizes_b)}) {where}")
            return False
        cuts = sorted({*_prefix(sizes_a), *_prefix(sizes_b)})
        pieces = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, sum(sizes_a)])]
        pa, pb = self.split(a, pieces), self.split(b, pieces)
        if pa is None or pb is None or any(len(x) != 1 or len(y) != 1 for x, y in zip(pa, pb)):
            for g in (*a, *b):
                self.freeze(g, f"cannot align the channel structure of two tensors {where}")
            return False
        for (x,), (y,) in zip(pa, pb):
            self.union(x, y, where)
        return True

    def bind(
        self, module: str, role: str, segments: list[tuple[int, int]], where: str,
        tensors: tuple[tuple[str, int], ...] = (),
    ) -> None:
        """Record that ``module``'s ``role`` dim is ``segments``; a second call must agree segment-wise."""
        key = (module, role)
        old = self.bindings.get(key)
        if old is None:
            self.bindings[key] = RawBinding(module, role, list(segments), tuple(tensors))
            return
        if tensors and not old.tensors:
            old.tensors = tuple(tensors)
        if len(old.segments) == len(segments) and all(ro == rn for (_, ro), (_, rn) in zip(old.segments, segments)):
            for (go, _), (gn, _) in zip(old.segments, segments):
                self.union(go, gn, f"({module} called more than once) {where}")
            return
        reason = f"{module} is called on inputs of different channel structure"
        for gid, _ in [*old.segments, *segments]:
            self.freeze(gid, reason)

    def finalize(self) -> tuple[list[ChannelGroup], list[Binding], dict[int, list[str]]]:
        """Compact ids in binding order; returns groups, bindings and every reason per final id."""
        for raw in self.bindings.values():
            raw.segments = [e for gid, r in raw.segments for e in self.expand(gid, r)]
        ids: dict[int, int] = {}
        for raw in self.bindings.values():
            for gid, _ in raw.segments:
                ids.setdefault(self.find(gid), len(ids))
        groups: list[ChannelGroup] = []
        reasons: dict[int, list[str]] = {}
        for root, new_id in ids.items():
            info = self._info[root]
            why = list(info.reasons)
            if not why and not info.producer:
                why = ["no module produces these channels"]
            reasons[new_id] = why
            groups.append(ChannelGroup(new_id, info.size, searchable=not why, reason=why[0] if why else ""))
        bindings = [
            Binding(raw.module, raw.role, tuple(Segment(ids[self.find(g)], r) for g, r in raw.segments), raw.tensors)
            for raw in self.bindings.values()
        ]
        return groups, bindings, reasons


def _prefix(sizes: list[int]) -> list[int]:
    """Inner cut offsets of consecutive sizes."""
    out, at = [], 0
    for n in sizes[:-1]:
        at += n
        out.append(at)
    return out


def frozen_items(groups: list[ChannelGroup], bindings: list[Binding]) -> list[FrozenItem]:
    """One item per module dim that touches a frozen group."""
    by_id = {g.id: g for g in groups}
    items: list[FrozenItem] = []
    for b in bindings:
        seen: set[int] = set()
        for seg in b.segments:
            group = by_id[seg.group]
            if not group.searchable and seg.group not in seen:
                seen.add(seg.group)
                items.append(FrozenItem(b.module, f"{b.role} channels (group {group.id}): {group.reason}"))
    return items
