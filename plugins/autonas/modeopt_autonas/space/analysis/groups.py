"""Union-find over channel groups plus the module bindings that reference them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..structure import Binding, ChannelGroup, FrozenItem, Segment

__all__ = ["GroupTable", "RawBinding", "frozen_items"]


@dataclass
class RawBinding:
    """A binding under construction: segments hold union-find ids (resolved at the end)."""

    module: str
    role: str
    segments: list[tuple[int, int]]  # (group id, repeat)


@dataclass
class _Root:
    size: int
    producer: bool
    reasons: list[str] = field(default_factory=list)


class GroupTable:
    """Channel groups that merge when tied; a frozen reason sticks to the merged group."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._info: dict[int, _Root] = {}
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

    def is_frozen(self, gid: int) -> bool:
        return bool(self._info[self.find(gid)].reasons)

    def freeze(self, gid: int, reason: str) -> None:
        reasons = self._info[self.find(gid)].reasons
        if reason not in reasons:
            reasons.append(reason)

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
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self._parent[gone] = keep
        info = self._info.pop(gone)
        root = self._info[keep]
        root.producer = root.producer or info.producer
        root.reasons.extend(r for r in info.reasons if r not in root.reasons)

    def bind(self, module: str, role: str, segments: list[tuple[int, int]], where: str) -> None:
        """Record that ``module``'s ``role`` dim is ``segments``; a second call must agree segment-wise."""
        key = (module, role)
        old = self.bindings.get(key)
        if old is None:
            self.bindings[key] = RawBinding(module, role, list(segments))
            return
        if len(old.segments) == len(segments) and all(ro == rn for (_, ro), (_, rn) in zip(old.segments, segments)):
            for (go, _), (gn, _) in zip(old.segments, segments):
                self.union(go, gn, f"({module} called more than once) {where}")
            return
        reason = f"{module} is called on inputs of different channel structure"
        for gid, _ in [*old.segments, *segments]:
            self.freeze(gid, reason)

    def finalize(self) -> tuple[list[ChannelGroup], list[Binding], dict[int, list[str]]]:
        """Compact ids in binding order; returns groups, bindings and every reason per final id."""
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
            Binding(raw.module, raw.role, tuple(Segment(ids[self.find(g)], r) for g, r in raw.segments))
            for raw in self.bindings.values()
        ]
        return groups, bindings, reasons


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
